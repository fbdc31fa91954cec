# The multi-rank stages. Their shell starts ranks with {params.launcher} (empty locally; an
# explicit `srun --nodes --ntasks-per-node ...` when the profile sets resources.mpi) and tells the
# training the world size it must see. Resume state lives under results/state/<variant>/ (see
# state_dir in common.smk) and is not a declared output, so Snakemake never deletes it.


# The network between nodes, once per run, before any validate_short or fine-tune: 2 whole nodes
# under the fine-tune's srun line (profiles/lumi), an all-reduce of the model's gradient size with
# RCCL's debug output on, and the Slingshot (cxi) provider required in it (aqnet.train.network).
# A separate 2-node stage costs 2 nodes for a few minutes once; validate_short on 2 nodes would
# double every variant's and seed's short run instead. Each rank's RCCL debug file is appended
# to logs/check_network.rccl.log.
rule check_network:
    input:
        config=expand(rules.resolve_shared_config.output.config, scope="network"),
    output:
        report=result("gates/check_network.json"),
    log:
        log="logs/check_network.log",
        report="logs/check_network.json",
        # every rank's RCCL debug output, apart: the stage log ends with the verdict line
        rccl="logs/check_network.rccl.log",
    benchmark:
        result(f"benchmarks/check_network/{SHARED}.tsv")
    conda:
        ENV
    threads: 2
    resources:
        # its projected cost is this request (aqnet.train.cost.network_check_projection)
        nodes=NETWORK_CHECK_NODES,
        tasks_per_node=CFG["launch"]["tasks_per_node"],
        mem_mb=4000,
        runtime=NETWORK_CHECK_MINUTES,
        gpu_nodes=NETWORK_CHECK_NODES,
    params:
        launcher=launcher,
        record_job=record_slurm_job("check_network"),
        world_size=world_size,
        debug_dir="logs/check_network/rccl",
    shell:
        # RCCL's debug output from the start of every rank (the check adds one file per rank)
        "{params.record_job}rm -rf {params.debug_dir}; rc=0;"
        " NCCL_DEBUG=INFO NCCL_DEBUG_SUBSYS=INIT,NET"
        " {params.launcher}aqnet check-network"
        " --config {input.config} --debug-dir {params.debug_dir}"
        " --world-size {params.world_size}"
        " --report {output.report} --report-copy {log.report} > {log.log} 2>&1 || rc=$?;"
        ' : > {log.rccl}; for f in {params.debug_dir}/rccl.*.log; do if [ -e "$f" ]; then'
        ' echo "== RCCL debug output: $f" >> {log.rccl}; cat "$f" >> {log.rccl}; fi; done;'
        ' exit "$rc"'


rule validate_short:
    input:
        config=rules.resolve_run_config.output.config,
        cache=rules.build_cache.output.meta,
        init=baseline_checkpoint(),
        smoke=rules.smoke_forward.output.report,
        # ancient: a rerun of the network check does not make every variant's short run stale
        network=ancient(rules.check_network.output.report),
    output:
        report=result("variants/{variant}/validate_short.json"),
        metrics=result("variants/{variant}/validate_short/metrics.csv"),
        ckpt=result("variants/{variant}/validate_short/final.ckpt"),
    log:
        log="logs/validate_short/{variant}.log",
        report="logs/validate_short/{variant}.json",
    benchmark:
        result("benchmarks/validate_short/{variant}.tsv")
    conda:
        ENV
    threads: 2
    resources:
        nodes=1,
        tasks_per_node=CFG["launch"]["tasks_per_node"],
        mem_mb=8000,
        runtime=30,
        gpu_nodes=1,
    params:
        cache_dir=input_dir("cache"),
        out_dir=output_dir("metrics"),
        state_dir=result("state/{variant}/validate_short"),
        launcher=launcher,
        record_job=record_slurm_job("validate_short"),
        world_size=world_size,
    shell:
        # A fresh start every time: the point is to measure the step time and the starting loss.
        "{params.record_job}rm -rf {params.state_dir} && {params.launcher}aqnet validate-short"
        " --config {input.config} --cache {params.cache_dir} --init {input.init}"
        " --out-dir {params.out_dir} --state-dir {params.state_dir}"
        " --world-size {params.world_size}"
        " --report {output.report} --report-copy {log.report} > {log.log} 2>&1"


# Nothing may fail after the fine-tune that could fail before it: evaluate and report run on
# every variant's validate_short weights (aqnet.gates.rehearsal) before any fine-tune starts.
rule rehearse_report:
    input:
        config=expand(rules.resolve_shared_config.output.config, scope="report"),
        cache=rules.build_cache.output.meta,
        baseline=baseline_checkpoint(),
        wind_order=rules.verify_wind_order.output.report,
        configs=expand(rules.resolve_config.output.config, variant=VARIANTS),
        validated=expand(rules.validate_short.output.report, variant=VARIANTS),
        ckpts=expand(rules.validate_short.output.ckpt, variant=VARIANTS),
    output:
        report=result("gates/rehearse_report.json"),
    log:
        log="logs/rehearse_report.log",
        report="logs/rehearse_report.json",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        launcher=launcher,
        cache_dir=input_dir("cache"),
        gates_dir=input_dir("wind_order"),
        work_dir=result("rehearsal"),
        variant_dirs=lambda wildcards, input: " ".join(
            f"--variant-dir {v}={Path(c).parent}"
            for v, c in zip(VARIANTS, input.configs)
        ),
    shell:
        "{params.launcher}aqnet rehearse-report --config {input.config}"
        " --cache {params.cache_dir} --baseline {input.baseline} --gates {params.gates_dir}"
        " {params.variant_dirs} --work-dir {params.work_dir}"
        " --report {output.report} --report-copy {log.report} > {log.log} 2>&1"


rule check_budget:
    # The budget gate before any fine-tune: the projection again, now with every variant's
    # measured step time. budget_refusal already refuses the DAG (dry runs too) on the figures
    # known when it is built.
    input:
        budget_refusal,
        cache=rules.build_cache.output.meta,
        configs=expand(rules.resolve_config.output.config, variant=VARIANTS),
        validated=expand(rules.validate_short.output.report, variant=VARIANTS),
    output:
        report=result("gates/check_budget.json"),
    log:
        log="logs/check_budget.log",
        report="logs/check_budget.json",
    localrule: True
    conda:
        ENV
    script:
        "../scripts/check_budget.py"


rule finetune:
    input:
        config=rules.resolve_run_config.output.config,
        cache=rules.build_cache.output.meta,
        init=baseline_checkpoint(),
        validated=rules.validate_short.output.report,
        # ancient: a rehearsal rerun for a new variant does not make the finished fine-tunes
        # of the others out of date; it still runs (and must pass) before any fine-tune starts
        rehearsed=ancient(rules.rehearse_report.output.report),
        # ancient as well: the budget gate covers every variant, so a new variant reruns it
        budget=ancient(rules.check_budget.output.report),
    output:
        ckpt=result("variants/{variant}/finetune/final.ckpt"),
        metrics=result("variants/{variant}/finetune/metrics.csv"),
        summary=result("variants/{variant}/finetune/summary.json"),
    log:
        "logs/finetune/{variant}.log",
    benchmark:
        result("benchmarks/finetune/{variant}.tsv")
    conda:
        ENV
    threads: 2
    resources:
        nodes=CFG["launch"]["nodes"],
        tasks_per_node=CFG["launch"]["tasks_per_node"],
        mem_mb=8000,
        # Projected time x margin + start-up, capped by the partition (finetune_runtime).
        runtime=finetune_runtime,
        # Counted against the global `--resources gpu_nodes=N` (profiles/lumi): the fine-tunes of
        # several variants queue one after another instead of all at once.
        gpu_nodes=CFG["launch"]["nodes"],
    params:
        cache_dir=input_dir("cache"),
        out_dir=output_dir("ckpt"),
        state_dir=state_dir("finetune"),
        launcher=launcher,
        record_job=record_slurm_job("finetune"),
        world_size=world_size,
        requeue=REQUEUE_SCRIPT,
    shell:
        # --expected-step-time-from: validate_short's measured step time arms the watchdog.
        # Exit 75: SIGUSR1 came before the time limit and the state is saved; inside a Slurm job
        # the requeue script (workflow/scripts/requeue_on_tempfail.sh, which appends the output
        # to the log so it keeps every allocation's part) requeues the job, the plugin keeps
        # waiting for the same job id, and the requeued job resumes from the state.
        "{params.record_job}bash {params.requeue} {log} -- {params.launcher}aqnet finetune"
        " --config {input.config} --cache {params.cache_dir}"
        " --init {input.init} --out-dir {params.out_dir} --state-dir {params.state_dir}"
        " --world-size {params.world_size}"
        " --expected-step-time-from {input.validated}"
