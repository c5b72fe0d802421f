#!/bin/bash
# Multi-node classification on SLURM: one task per GPU, Lightning Fabric joins the tasks srun
# starts (SLURMEnvironment: ranks from SLURM_PROCID/SLURM_LOCALID, master from the node list).
# trainer.devices must equal --ntasks-per-node and trainer.num_nodes must equal --nodes.
# Each process classifies its shard of every global batch; rank zero writes the outputs and a
# checkpoint after every iteration, so a requeued or cancelled job continues with resume=true.
#
#   sbatch scripts/slurm_classify.sh data=file data.path=/data/Particles/particles.star n_classes=200
#   sbatch scripts/slurm_classify.sh resume=true      # same job name: continues its run directory
#
#SBATCH --job-name=ackmeans-classify
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

# One run directory for all tasks (out_dir's default contains the start time, which differs
# between tasks by a few seconds); override RUN_DIR to continue an earlier run.
RUN_DIR=${RUN_DIR:-runs/classify/${SLURM_JOB_NAME}}
export OMP_NUM_THREADS=${SLURM_CPUS_PER_TASK:-1}

srun ackmeans-torch classify \
    trainer=ddp \
    trainer.devices="${SLURM_NTASKS_PER_NODE}" \
    trainer.num_nodes="${SLURM_JOB_NUM_NODES}" \
    out_dir="${RUN_DIR}" \
    progress=false \
    "$@"
