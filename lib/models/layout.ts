/**
 * From the decoder's tensors to a checkpoint's layout (lib/models/config.ts `tensorMappings`), for saving and
 * for comparing gradients: identity for every architecture but GPT-2, whose Conv1D weights are stored
 * [in, out] and whose fused c_attn holds q, k and v side by side. Identity mappings never copy. (Loading goes
 * the other way through lib/formats/checkpoint.ts's column/transpose reads, see architectureMapping.)
 */
import { TensorMapping } from './config';

/** A decoder tensor's storage (a view of the parameter or gradient buffer). */
export type TensorView = (name: string) => Float32Array;

/** Transpose a row-major [rows, cols] matrix. */
export function transpose2d(src: Float32Array, rows: number, cols: number, out = new Float32Array(rows * cols)): Float32Array {
  const B = 32; // blocked, so both sides stay in cache
  for (let r0 = 0; r0 < rows; r0 += B)
    for (let c0 = 0; c0 < cols; c0 += B) {
      const r1 = Math.min(rows, r0 + B), c1 = Math.min(cols, c0 + B);
      for (let r = r0; r < r1; r++) for (let c = c0; c < c1; c++) out[c * rows + r] = src[r * cols + c];
    }
  return out;
}

/** The checkpoint tensor of a mapping, assembled from the decoder's tensors (a view when it is the identity). */
export function gatherHf(m: TensorMapping, view: TensorView): Float32Array {
  if (!m.transpose && m.parts.length === 1) return view(m.parts[0]);
  const parts = m.parts.map(view);
  const total = parts.reduce((s, p) => s + p.length, 0);
  const rows = new Float32Array(total);
  let off = 0;
  for (const p of parts) {
    rows.set(p, off);
    off += p.length;
  }
  if (!m.transpose) return rows;
  // decoder layout [out, in] = [hfShape[1], hfShape[0]] → HF [in, out]
  return transpose2d(rows, m.hfShape[1], m.hfShape[0]);
}
