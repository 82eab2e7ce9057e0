"""llama3_jax: Llama 3 as Meta's report describes it, in JAX. The packages, bottom to top; a
package imports only from packages above it in this list (tests/test_layers.py checks it):

    errors, cli  one-line errors for the user (UserError); how every launcher ends (exit codes)
    schema       typed configs from ConfigDicts: the one converter, defaults stated once
    model        ModelConfig, Transformer, RewardModel, attention kernels, FLOPs (no mesh)
    optim        AdamW, the schedule in tokens, the batch/sequence stages
    runtime      the process: distributed start, signals, watchdog, goodput, faults; the hooks
    sharding     mesh, logical -> mesh rules, what a layout puts where
    parallel     pipeline, context parallelism, and `parallelize` (their one door into a model)
    data         tokenizers, raw text, prepared shards, the loader, conversations, curation
    objectives   what a step minimises: next token, DPO, reward model
    infer        KV cache, sampling, generation
    checkpoint   Orbax checkpoints, a run's model read back, averaging, Hugging Face in/out
    eval         tasks, multiple choice, generative, perplexity, robustness, contamination
    planner      memory and step time of a layout on a cluster, the layout search
    train        config schema, plan, setup, the step, the loop, metrics, the dry run
    scaling      scaling-law sweeps and fits
    posttrain    orchestration only: SFT/DPO/reward-model stages, rejection sampling, rounds
    hf           `llama3_jax.hf`, a shortcut to checkpoint.hf

Where a new file goes: in the lowest package whose job it is and whose imports it needs. A
model size is a row of model/config.py; an objective a file in objectives/; a parallelism a
module in parallel/ installed by parallelize.py (plus a rules table in sharding/rules.py); an
attention kernel an entry of model/attention_ops.KERNELS; an evaluation task a reader or
shipped task in eval/tasks.py; a data source a Source (data/source.py); a launcher a file in
experiments/ with its config in experiments/configs/.
"""
