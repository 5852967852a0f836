#!/usr/bin/env bash
# The C++ core under sanitizers: builds _C from a copy of the tree with
# AddressSanitizer + UndefinedBehaviorSanitizer (default) or ThreadSanitizer
# (--thread), then runs the in-process tests and a 2-rank MPI run with it.
# Any finding fails the run. Extra arguments go to pytest.
#
#   scripts/sanitize.sh            # ASan + UBSan
#   scripts/sanitize.sh --thread   # TSan: the in-process transport and the progress thread
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
"$root/scripts/setup_venv.sh"
python="$root/.venv/bin/python"

mode=address
if [ "${1:-}" = "--thread" ]; then
  mode=thread
  shift
fi

# A copy, so that the sanitized _C never replaces the one the venv uses.
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
git -C "$root" ls-files -co --exclude-standard -z | (cd "$root" && xargs -0 cp --parents -t "$work")
cd "$work"

if [ "$mode" = address ]; then
  flags="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
  runtime="$(gcc -print-file-name=libasan.so)"
  # CPython itself leaks by design at exit; the leaks that matter show as
  # growth in the soak benchmark instead.
  export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
  export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
  tests=(tests/test_local_allreduce.py tests/test_collectives.py tests/test_coalesced.py tests/test_errors.py
         tests/test_failures.py tests/test_selection.py tests/test_schedules.py)
else
  flags="-fsanitize=thread"
  runtime="$(gcc -print-file-name=libtsan.so)"
  export TSAN_OPTIONS="halt_on_error=1:report_signal_unsafe=0"
  # UCX's memory hooks (libucm) intercept madvise at thread exit, which
  # crashes inside TSan's own interceptors; pyallreduce does not need them.
  export UCX_MEM_EVENTS=no
  # TSan runs Python about ten times slower: the tests where threads meet
  # (ranks as threads, faults and notices, the progress thread, free()).
  tests=(tests/test_failures.py tests/test_local_allreduce.py::test_every_algorithm_keeps_to_nccl_group_semantics
         tests/test_coalesced.py::test_async_calls_complete_in_order_and_a_later_sync_call_waits_for_them
         tests/test_coalesced.py::test_an_async_error_reaches_every_rank_through_the_future
         tests/test_errors.py::test_free_while_another_threads_call_runs_raises_and_the_call_completes
         tests/test_errors.py::test_a_bad_buffer_given_to_allreduce_async_on_one_rank)
fi
echo "sanitize: building _C with $flags"
CFLAGS="$flags -O1 -g" LDFLAGS="$flags" PYALLREDUCE_CUDA=0 "$python" setup.py build_ext --inplace > build.log 2>&1 ||
  { cat build.log >&2; exit 1; }

# The sanitizer's runtime must come first; libstdc++ with it, so that its
# interceptors find the real __cxa_throw in a Python that links no C++.
runtime="$runtime $(gcc -print-file-name=libstdc++.so)"
export LD_PRELOAD="$runtime" PYTHONPATH="$work" OMP_NUM_THREADS=1
"$python" -c "import pyallreduce, sys; assert pyallreduce.__file__.startswith(sys.argv[1]), pyallreduce.__file__" "$work"
echo "sanitize: in-process tests"
"$python" -m pytest -q -p no:cacheprovider "${tests[@]}" "$@"
echo "sanitize: 2 ranks under mpiexec"
"$root/.venv/bin/mpiexec" -n 2 -genv LD_PRELOAD "$runtime" "$python" tests/mpi_worker.py
"$root/.venv/bin/mpiexec" -n 2 -genv LD_PRELOAD "$runtime" "$python" tests/fault_worker.py sleep 1 1
echo "sanitize: clean ($mode)"
