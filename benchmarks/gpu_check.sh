#!/usr/bin/env bash
# Every GPU check of the project, in groups, one table at the end.
#
#   bash benchmarks/gpu_check.sh [--record] [GROUP ...]   # on a CUDA GPU machine, from the repo root
#   GPU_CHECK_OUT=$OUT bash benchmarks/gpu_check.sh ...    # keep every check's output there
#
# Groups run in the order given, so the one that matters most comes first in a call that may be cut
# short. Times measured on one H200 (2026-11-27, recipes then eager; compiling the losses too, as the
# recipes now do, adds each process's compile time, not yet timed on a GPU); a device call has 10
# minutes and a session 15, so choose: `vitl14 embed` took 6 minutes, `vitg14` and `levers` about 5 each:
#   vitl14, vitg14  the recipe as shipped (compiled blocks and losses) trained for 20 steps under torchrun
#                   (FSDP2), finite losses, an export that `lvd:` loads, and how busy the GPU was
#                   over 5 of those steps (run.profile_steps); the bare step's MFU, the
#                   loop's ratio to it unsharded (target >= 0.95) and under FSDP2 (target >= 0.90),
#                   and peak memory: 3 minutes for vitl14 (1 + 1 + 1), vitg14's training alone 2.
#                   vitl14 first runs the CUDA tests of colouring batches on the GPU (not yet timed).
#                   `train` is both.
#   embed           GPU decoding's tests with torchvision's and with TorchCodec's nvjpeg (neither may
#                   overwrite memory queued kernels still read), then the embed stage in-process with
#                   ViT-H/14 fp16, JPEGs decoded on the CPU and then on the GPU, against its bare loop
#                   (target >= 0.90 with GPU decoding), the CPU cores busy meanwhile, and a profiled
#                   pass of each (GPU busy share, top operators): 3 minutes without the profiles.
#   levers          vitl14's top operators by device time under FSDP2 (--profile), then its bare
#                   step plain, with each speed lever alone (twice the batch is one) and with all of
#                   them (--levers), then the unsharded profile: about 5 minutes (the eager lever
#                   table took 2, the unsharded profile 1).
#   curation-value  the curation-value benchmark at four times its CPU steps, three seeds, eight
#                   loader workers (its own several minutes; the curation itself runs on the CPU).
# GPU_CHECK_OVERRIDES="run.compile=false ..." adds config overrides to every training command. Where a
# recipe's training fails inside torch.compile, its checks run again eager (run.compile=false) and say
# so, so that one call still yields figures; the table keeps the failed row.
# With --record every figure goes to benchmarks/results.jsonl under the GPU's name, and a copy of that
# file to GPU_CHECK_OUT after each check (a tree copied to a GPU machine has no .git: LVD_COMMIT=SHA
# names the commit measured). GPU_CHECK_OUT gets three files: log.txt (every check's output),
# table.txt and results.jsonl; each check's own output stays in /tmp/gpu_check/checks.
#
# The machine needs torch, torchvision, timm, numpy, pyarrow, PIL, scikit-image, fsspec, typer, rich,
# yaml, jinja2 and matplotlib; the project's other imports come as wheels in ./wheels (not Ray, not
# faiss-gpu, not img2dataset or pandas: these checks run without them, and
# tests/test_gpu_machine_imports.py keeps it so), made on a networked machine with
#
#   pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d wheels \
#       pydantic pydantic-core annotated-types typing-inspection typing-extensions \
#       "webdataset<0.3" braceexpand faiss-cpu universal-pathlib pathlib-abc torchcodec \
#       pytest pluggy iniconfig packaging pygments pytest-timeout
set -uo pipefail
cd "$(dirname "$0")/.."
record="" groups=""
for arg in "$@"; do
  case "$arg" in
    --record) record="--record" ;;
    train) groups="$groups vitl14 vitg14" ;;
    vitl14|vitg14|embed|levers|curation-value) groups="$groups $arg" ;;
    *) echo "gpu_check: unknown argument $arg (groups: vitl14 vitg14 train embed levers curation-value)"; exit 2 ;;
  esac
done
groups="${groups:-vitl14 embed}"
work=/tmp/gpu_check                  # shards (a later call on the same machine reuses them) and runs
checks="$work/checks"                # each check's output
out="${GPU_CHECK_OUT:-$work}"        # log.txt, table.txt, results.jsonl
rm -rf "$checks" && mkdir -p "$checks" "$out"  # this call's checks only: the tables below read them
log="$out/log.txt"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}:$work/site" PYTHONUNBUFFERED=1  # site: the carried wheels
export LVD_DEBUG=1  # a failing check's log keeps its traceback: a device minute is too dear to rerun for it

if ! python -c "import torch" 2>/dev/null; then  # some GPU images name their interpreter python3 only
  mkdir -p "$work/bin" && printf '#!/bin/sh\nexec %s "$@"\n' "$(command -v python3)" >"$work/bin/python"  # not a link:
  chmod +x "$work/bin/python" && export PATH="$work/bin:$PATH"  # a venv's python finds its packages by the path it was called by
fi
if [ -d wheels ] && ! python -c "import pydantic, webdataset, faiss, upath, torchcodec, pytest, pytest_timeout" 2>/dev/null; then
  python -m pip install -q --no-deps --no-index --no-compile --target "$work/site" wheels/*.whl || exit 1
fi
python -c "import torch; assert torch.cuda.is_available(), 'no CUDA GPU'; print(torch.cuda.get_device_name())" \
  || { echo "gpu_check: no CUDA GPU here; nothing measured"; exit 2; }

figures() {  # status, a check's output: the lines worth a table cell, or for a failed check the error it died of
  if [ "$1" = ok ]; then
    tr '\r' '\n' <"$2" | grep -E 'ratio|MFU|peak|exported|loads|^profile|GPU busy|images/s|cores busy|final loss|curation value:|^loader|^colour|passed|failed' | grep -v '^lever '
  else
    grep -E '^(\[rank[0-9]+\]: )?(error: |[A-Za-z_.]*(Error|Exception|Failed)\b)' "$2" | grep -v ChildFailedError | tail -1
  fi
}

rows=()
check() {  # name, command...: run it, keep its output, add a row with its status
  local name="$1"; shift
  local started=$SECONDS
  echo "gpu_check: $name ..."
  if "$@" >"$checks/$name.txt" 2>&1; then status=ok; else status="FAILED (see log.txt)"; fi
  { echo "===== $name"; cat "$checks/$name.txt"; } >>"$log"
  rows+=("$name|$status|$((SECONDS - started)) s|$(figures "$status" "$checks/$name.txt" | tr '\n' ' ' | cut -c1-600)")
  echo "gpu_check: ${rows[-1]}"  # as it finishes, so a call cut short still shows what ran
  if [ -f benchmarks/results.jsonl ]; then cp benchmarks/results.jsonl "$out/"; fi
}

shards="$work/shards"
training_shards() {  # 2,000 web-size JPEGs, made once per machine
  [ -f "$shards/000003.tar" ] && return
  python - "$shards" <<'EOF'
import sys
from pathlib import Path
from benchmarks.train import synthetic_shards
synthetic_shards(Path(sys.argv[1]), 2000)
EOF
}

read -ra overrides <<<"${GPU_CHECK_OVERRIDES:-}"

recipe() {  # vitl14 | vitg14: train it under FSDP2, load its export, then the bare step, unsharded and sharded
  local name="$1" batch eager=""
  batch=$([ "$name" = vitl14 ] && echo 32 || echo 12)
  local common=(data.shards="$shards" data.workers=12 data.batch_size_per_gpu="$batch" "${overrides[@]}")
  if [ "$name" = vitl14 ]; then  # colouring batches on the GPU: the CPU's crops, and no host syncs
    check "colour-tests" python -m pytest -p no:cacheprovider -q -rxX tests/test_train_augment.py -k cuda
  fi
  train_recipe "$name-train" "$name" "${common[@]}"
  if [ "$status" != ok ] && compile_failed "$checks/$name-train.txt"; then
    eager="-eager" common+=(run.compile=false)
    train_recipe "$name-train$eager" "$name" "${common[@]}"
  fi
  check "$name-unsharded$eager" python benchmarks/train.py --config "configs/training/$name.yaml" --steps 15 $record \
      "${common[@]}" run.parallel=ddp
  check "$name-fsdp2$eager" torchrun --standalone --nproc-per-node 1 benchmarks/train.py \
      --config "configs/training/$name.yaml" --steps 15 $record "${common[@]}" run.parallel=fsdp
}

compile_failed() {  # log: whether a run failed inside torch.compile (Dynamo or Inductor), not for want of memory
  grep -qE '_dynamo|_inductor|BackendCompilerFailed|InductorError' "$1" && ! grep -q 'OutOfMemoryError' "$1"
}

train_recipe() {  # check name, recipe, overrides...: 20 steps under torchrun (FSDP2) from scratch, then load its export
  local check_name="$1" name="$2"; shift 2
  rm -rf "${work:?}/$name"  # a fresh run, not a resume of the last one's
  check "$check_name" bash -c "torchrun --standalone --nproc-per-node 1 -m pipelines.pretrain \
      configs/training/$name.yaml $* run.output_dir=$work/$name run.max_steps=20 run.log_every=5 \
      run.profile_steps=[12,17] \
    && python -c \"from models.backbones import load_backbone; \
      m = load_backbone('lvd:$work/$name/export'); print('export loads:', sum(p.numel() for p in m.parameters()), 'params')\""
}

# The embed stage in-process (no Ray here) against its bare model(x) loop, start-up left out: JPEGs
# decoded by the prefetch threads on the CPU, then on the GPU (nvjpeg). The stage reads the 3,000
# ingested images 8 times, so the passes it compares hold seconds of GPU work.
embed() {
  check "decode-tests" python -m pytest -p no:cacheprovider -q -rxX tests/test_device_decode.py -k overwrites
  check "embed-vith14" python benchmarks/embed.py --model timm:vit_huge_patch14_224 --gpu --executor local \
      --decode cpu device --images 3000 --repeat 8 --batch-size 256 --profile $record
}

# Where vitl14's step spends its device time under FSDP2 and unsharded, and what each speed lever buys.
levers() {
  check "vitl14-fsdp-profile" torchrun --standalone --nproc-per-node 1 benchmarks/train.py \
      --config configs/training/vitl14.yaml --profile --steps 5 data.shards="$shards" run.parallel=fsdp "${overrides[@]}"
  check "vitl14-levers" python benchmarks/train.py --config configs/training/vitl14.yaml --levers --steps 10 \
      $record data.shards="$shards" "${overrides[@]}"
  check "vitl14-profile" python benchmarks/train.py --config configs/training/vitl14.yaml --profile --steps 5 \
      data.shards="$shards" run.parallel=ddp "${overrides[@]}"
}

# Does curation pay, with four times the CPU run's steps (the curation itself runs on the CPU).
curation_value() {
  check "curation-value" python benchmarks/curation_value.py --work "$work/curation-value" --seeds 3 --scale 4 \
      --workers 8 $record
}

python benchmarks/train.py --help >/dev/null || exit 1
for group in $groups; do
  case "$group" in
    vitl14|vitg14) training_shards && recipe "$group" ;;
    levers) training_shards && levers ;;
    embed) embed ;;
    curation-value) curation_value ;;
  esac
done

{
  printf '\n%-20s | %-8s | %-6s | %s\n' check status time figures
  for row in "${rows[@]}"; do
    IFS='|' read -r name status took figures <<<"$row"
    printf '%-20s | %-8s | %-6s | %s\n' "$name" "$status" "$took" "$figures"
  done
  for name in embed-vith14 vitl14-levers vitl14-profile vitl14-fsdp-profile; do  # tables of their own
    [ -f "$checks/$name.txt" ] && { echo; echo "== $name"; grep -vE '^[WIV][0-9]{4} |Warning|warn\(|/s\]' "$checks/$name.txt"; }
  done
} | tee "$out/table.txt"
echo "full log: $log"
