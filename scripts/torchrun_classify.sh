#!/bin/bash
# Classification with torchrun (one node, or several with a rendezvous endpoint): torchrun
# starts the processes, Lightning Fabric joins them (TorchElasticEnvironment).
#
#   scripts/torchrun_classify.sh 4 data=file data.path=particles.star n_classes=100    # 4 GPUs
#   NNODES=2 NODE_RANK=0 RDZV=host0:29500 scripts/torchrun_classify.sh 4 ...           # on each node
#   ACCELERATOR=cpu scripts/torchrun_classify.sh 2                                     # gloo on CPU
set -euo pipefail

NPROC=${1:?usage: torchrun_classify.sh <processes per node> [key=value ...]}
shift
NNODES=${NNODES:-1}
ACCELERATOR=${ACCELERATOR:-cuda}
# every process must name the same run directory (the default one contains the start time)
RUN_DIR=${RUN_DIR:-runs/classify/torchrun_$(date +%Y-%m-%d_%H-%M-%S)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}

if [ "${NNODES}" -gt 1 ]; then
    RENDEZVOUS=(--node_rank="${NODE_RANK:?set NODE_RANK}" --rdzv_backend=c10d
                --rdzv_endpoint="${RDZV:?set RDZV=host:port}")
else
    RENDEZVOUS=(--standalone)
fi

torchrun --nnodes="${NNODES}" --nproc_per_node="${NPROC}" "${RENDEZVOUS[@]}" \
    -m ackmeans_torch.cli.main classify \
    trainer=ddp trainer.accelerator="${ACCELERATOR}" \
    trainer.devices="${NPROC}" trainer.num_nodes="${NNODES}" \
    out_dir="${RUN_DIR}" progress=false "$@"
