#!/usr/bin/env bash
# Driver for experiments/reproduce_paper.md: shard -> MFCC labels -> iteration 1 -> HuBERT labels -> iteration 2
# -> BiT chain (W1A2 -> W1A1) + export -> profile (Table 1) -> mini-SUPERB evaluation.
#   STAGES="shard labels1 it1 labels2 it2 distill profile evaluate" ENCODERS="vanilla conformer_s ..." \
#     TRAINER=configs/trainer/a100_4x8.yaml DISTILL_TRAINER=configs/trainer/a100_1x8.yaml bash experiments/reproduce_paper.sh
# Stages skip outputs that exist; training resumes from last.ckpt.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STAGES=${STAGES:-"shard labels1 it1 labels2 it2 distill profile evaluate"}
ENCODERS=${ENCODERS:-"vanilla conformer_s squeezeformer_xs sparseformer_dn_s sparseformer_sw_s"}
TRAINER=${TRAINER:-configs/trainer/a100_4x8.yaml}
DISTILL_TRAINER=${DISTILL_TRAINER:-configs/trainer/a100_1x8.yaml}
LS=${LS:-data/librispeech/LibriSpeech}
SH=data/librispeech/shards
LB=data/librispeech/labels

run() { echo "+ $*"; "$@"; }
want() { [[ " ${STAGES} " == *" $1 "* ]]; }

if want shard; then
  [[ -f ${SH}/train-960/index.json ]] || run ${PY} -m hubert_lit shard --out ${SH}/train-960 \
    --root ${LS}/train-clean-100 --root ${LS}/train-clean-360 --root ${LS}/train-other-500
  [[ -f ${SH}/dev/index.json ]] || run ${PY} -m hubert_lit shard --out ${SH}/dev \
    --root ${LS}/dev-clean --root ${LS}/dev-other
fi
if want labels1; then
  [[ -f ${LB}/mfcc-k100/train-960/meta.json ]] || run ${PY} -m hubert_lit label --shards ${SH}/train-960 \
    --features mfcc --clusters 100 --fit-fraction 0.1 --out ${LB}/mfcc-k100/train-960
  [[ -f ${LB}/mfcc-k100/dev/meta.json ]] || run ${PY} -m hubert_lit label --shards ${SH}/dev \
    --centroids ${LB}/mfcc-k100/train-960 --out ${LB}/mfcc-k100/dev
fi
for enc in ${ENCODERS}; do
  if want it1; then
    run ${PY} -m hubert_lit fit --config configs/pretrain/${enc}_it1.yaml --config ${TRAINER} --ckpt_path last
  fi
  if want labels2; then
    ckpt=runs/${enc}_it1/checkpoints/last.ckpt
    layer=$(${PY} -c "from hubert_lit.models.config import preset; print(preset('${enc}').encoder.num_layers // 2)")
    out=${LB}/${enc}_it1-l${layer}-k500   # the folder the ${enc}_it2 config reads
    [[ -f ${out}/train-960/meta.json ]] || run ${PY} -m hubert_lit label --shards ${SH}/train-960 --features hubert \
      --checkpoint ${ckpt} --layer ${layer} --clusters 500 --fit-fraction 0.1 --out ${out}/train-960
    [[ -f ${out}/dev/meta.json ]] || run ${PY} -m hubert_lit label --shards ${SH}/dev --features hubert \
      --checkpoint ${ckpt} --centroids ${out}/train-960 --out ${out}/dev
  fi
  if want it2; then
    run ${PY} -m hubert_lit fit --config configs/pretrain/${enc}_it2.yaml --config ${TRAINER} --ckpt_path last
  fi
  if want distill; then
    run ${PY} -m hubert_lit fit --config configs/distill/bq_${enc}_w1a2.yaml --config ${DISTILL_TRAINER} \
      --model.teacher=runs/${enc}_it2/checkpoints/last.ckpt --ckpt_path last
    run ${PY} -m hubert_lit fit --config configs/distill/bq_${enc}_w1a1.yaml --config ${DISTILL_TRAINER} \
      --model.teacher=runs/bq_${enc}_w1a2/checkpoints/last.ckpt --ckpt_path last
    [[ -f runs/bq_${enc}_w1a1/model.packed.pt ]] || run ${PY} -m hubert_lit export \
      --checkpoint runs/bq_${enc}_w1a1/checkpoints/last.ckpt --out runs/bq_${enc}_w1a1/model.packed.pt
  fi
  if want evaluate; then
    [[ -f data/superb/sid/meta.json ]] || run ${PY} -m hubert_lit superb-data --out data/superb
    for ckpt in runs/${enc}_it2/checkpoints/last.ckpt runs/bq_${enc}_w1a1/model.packed.pt; do
      [[ -f ${ckpt} ]] && run ${PY} -m hubert_lit evaluate --checkpoint ${ckpt} --tasks all --data data/superb
    done
  fi
done
if want profile; then
  run ${PY} -m hubert_lit profile --table1 --seconds 10
fi
if want evaluate; then
  run ${PY} experiments/table2.py
fi
