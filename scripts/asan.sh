#!/usr/bin/env bash
# npm run test:asan [-- TEST_PATTERN]: the CPU addon built with AddressSanitizer and UndefinedBehaviorSanitizer
# in build-asan/ (a copy of binding.gyp and native/; the normal build is untouched), then the tests that drive the
# native code on untrusted shapes and offsets run against it: the kernels, the model, the formats and the fuzz
# smoke. Any sanitizer report fails the run (halt_on_error).
set -euo pipefail
cd "$(dirname "$0")/.."
pattern="${1:-(kernels|matmul|attention|losses|engine|model|safetensors|checkpoint|fuzz|noise)\.test\.js$}"
asan_lib=$(g++ -print-file-name=libasan.so)
if [ ! -e "$asan_lib" ] || [ "$asan_lib" = "libasan.so" ]; then
  echo "test:asan: libasan.so not found (install g++ with its sanitizer runtimes)"; exit 1
fi
dir=build-asan
mkdir -p "$dir"
# the copy of binding.gyp with the sanitizers in every compile and in the link
sed -e 's/"common_cflags": \[/"common_cflags": ["-fsanitize=address,undefined", "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-g", /' \
    -e 's/"ldflags": \["-fopenmp"\]/"ldflags": ["-fopenmp", "-fsanitize=address,undefined"]/' binding.gyp > "$dir/binding.gyp"
[ "$(grep -c 'fsanitize' "$dir/binding.gyp")" -ge 2 ] || { echo "test:asan: could not switch the sanitizers on in binding.gyp's copy"; exit 1; }
rm -rf "$dir/native" && cp -r native "$dir/native"
[ -e "$dir/node_modules" ] || ln -s ../node_modules "$dir/node_modules"
[ -e "$dir/package.json" ] || echo '{"name":"undo-native-asan","private":true}' > "$dir/package.json"
nodedir="${npm_config_nodedir:-$(npm config get nodedir)}"
(cd "$dir" && ../node_modules/.bin/node-gyp rebuild -j 2 ${nodedir:+--nodedir="$nodedir"} > build.log 2>&1) || { tail -30 "$dir/build.log"; exit 1; }
npx tsc -p tsconfig.json
export UNDO_NATIVE_ADDON="$dir/build/Release/undo_native.node"
export LD_PRELOAD="$asan_lib"
# Node itself is not instrumented: leaks at exit and V8's own allocations are not ours to report
export UNDO_SANITIZED=1
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86"
export UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1:exitcode=87"
npx uvu dist/test "$pattern"
