# Evaluation of each variant against the baseline, and the report across variants. The report's
# outputs are aqnet.report.build.OUTPUTS (report_outputs in common.smk); their captions are
# workflow/report/<name>.rst.


rule evaluate:
    input:
        config=rules.resolve_config.output.config,
        cache=rules.build_cache.output.meta,
        baseline=baseline_checkpoint(),
        finetuned=rules.finetune.output.ckpt,
    output:
        evaluation=result("variants/{variant}/evaluation.nc"),
    log:
        "logs/evaluate/{variant}.log",
    benchmark:
        result("benchmarks/evaluate/{variant}.tsv")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        launcher=launcher,
        cache_dir=input_dir("cache"),
    shell:
        "{params.launcher}aqnet evaluate --config {input.config}"
        " --cache {params.cache_dir}"
        " --baseline {input.baseline} --finetuned {input.finetuned}"
        " --out {output.evaluation} > {log} 2>&1"


rule report:
    input:
        config=expand(rules.resolve_shared_config.output.config, scope="report"),
        cache=rules.build_cache.output.meta,
        wind_order=rules.verify_wind_order.output.report,
        # Everything `aqnet report` reads from each variant's folder (aqnet.report.inputs).
        configs=expand(rules.resolve_config.output.config, variant=VARIANTS),
        audits=expand(rules.audit_checkpoint.output.report, variant=VARIANTS),
        smokes=expand(rules.smoke_forward.output.report, variant=VARIANTS),
        validate_short=expand(rules.validate_short.output.report, variant=VARIANTS),
        metrics=expand(rules.finetune.output.metrics, variant=VARIANTS),
        summaries=expand(rules.finetune.output.summary, variant=VARIANTS),
        evaluations=expand(rules.evaluate.output.evaluation, variant=VARIANTS),
        # The projection beside the GPU-hours used (benchmark files, or sacct on Slurm).
        budget=rules.check_budget.output.report,
    output:
        **report_outputs(),
    log:
        "logs/report.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        launcher=launcher,
        cache_dir=input_dir("cache"),
        gates_dir=input_dir("wind_order"),
        out_dir=output_dir("verdict"),
        # NAME=DIR per variant (its folder of results, the parent of its config.yaml)
        variant_dirs=lambda wildcards, input: " ".join(
            f"--variant-dir {v}={Path(c).parent}"
            for v, c in zip(VARIANTS, input.configs)
        ),
        primary="default" if "default" in VARIANTS else VARIANTS[0],
        benchmarks=result("benchmarks"),
    shell:
        "{params.launcher}aqnet report --config {input.config} --cache {params.cache_dir}"
        " {params.variant_dirs}"
        " --gates {params.gates_dir} --primary {params.primary} --out-dir {params.out_dir}"
        " --benchmarks {params.benchmarks}"
        " > {log} 2>&1"
