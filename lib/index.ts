/** The library API of undo-native. */
export { native, withIsa } from './native';
export type { NativeBinding, NativeModel, NativeModelConfig, AttnDims, AdamWHyper } from './native';
export { Model, configFromHF, configToHF, presetConfig, PRESETS, saveDirAtomic } from './model';
export type { ModelConfig, Family, InitOptions } from './model';
export { train, lrAt, saveCheckpoint, loadTrainerState, DEFAULT_OPTIM } from './train';
export type { TrainConfig, OptimConfig, StepInfo, TrainerState, TrainOptions, TrainResult, Schedule } from './train';
export { generateIds, generateText, sampleToken } from './generate';
export type { SampleOptions } from './generate';
export { evalArithmetic, evalTextLoss, arithmeticMetrics } from './evaluate';
export * as data from './data';
export * as arithmetic from './tasks/arithmetic';
export { ByteTokenizer, loadTokenizer, saveTokenizer } from './tokenizer';
export { readSafetensors, writeSafetensors } from './safetensors';
export { UndoError } from './errors';
export { loss, TaidSchedule } from './losses';
export type { LossName, LossOptions, LossResult, TopKTeacher, TaidScheduleOptions } from './losses';
