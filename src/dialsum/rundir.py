"""The names of what a run directory holds: one place, read by train, run, generate and report."""

CONFIG_FILE = "config.yaml"  # the fully resolved config
ENV_FILE = "env.json"  # versions, device, git commit, command line
METRICS_FILE = "metrics.jsonl"  # one JSON object per logged step (train and eval)
SPIKES_FILE = "grad_norm_spikes.jsonl"  # every step whose grad norm crossed the threshold
SUMMARY_FILE = "summary.json"  # the end-of-run summary
MODEL_DIR = "model"  # final weights or LoRA adapter, plus tokenizer
CHECKPOINT_DIR = "checkpoints"  # Trainer checkpoints, for --resume
DEV_PREDICTIONS_FILE = "dev_predictions.csv"
DEV_SCORES_FILE = "dev_scores.json"
DEV_PER_SAMPLE_FILE = "dev_per_sample.csv"
SUBMISSION_FILE = "submission.csv"
REPORT_FILE = "report.md"
PLOTS_DIR = "plots"
LENGTH_CONTROL_FILE = "length_control.json"  # dev scores with the fitted length rule vs one fixed limit
CLEANUP_FILE = "cleanup.json"  # per split, how many summaries each clean-up step changed
