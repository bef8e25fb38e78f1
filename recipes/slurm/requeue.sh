# Sourced by cot.slurm and train.slurm. A stage that stopped before its job's time limit requeues the job
# itself (reasoningner/jobs.py); where it cannot (a container without SLURM's client) it writes this mark
# on storage every node shares, and the job's script, on the host, asks once the stage has ended.
export REASONINGNER_REQUEUE_MARK="${SLURM_SUBMIT_DIR:-$PWD}/.reasoningner-requeue-${SLURM_JOB_ID:-none}"
rm -f "$REASONINGNER_REQUEUE_MARK"
STATUS=0  # the stage's exit status (not one the submitting shell exported)

requeue_if_marked() {
  if [[ -e $REASONINGNER_REQUEUE_MARK ]]; then
    rm -f "$REASONINGNER_REQUEUE_MARK"
    scontrol requeue "$SLURM_JOB_ID" || echo "scontrol requeue $SLURM_JOB_ID failed: resubmit to resume" >&2
  fi
}
