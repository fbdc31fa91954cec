# Evaluation of each variant against the baseline, and the report across variants. The figure
# and table names are aqnet.report.build.OUTPUTS; their captions are workflow/report/<name>.rst.


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
        verdict=report(
            result("report/verdict.json"),
            caption="../report/verdict.rst",
            category="Verdict",
        ),
        summary_html=report(
            result("report/summary.html"),
            caption="../report/summary.rst",
            category="Verdict",
        ),
        summary_md=result("report/summary.md"),
        val_loss=report(
            result("report/val_loss.png"),
            caption="../report/val_loss.rst",
            category="Training",
        ),
        alpha=report(
            result("report/alpha.png"),
            caption="../report/alpha.rst",
            category="Training",
        ),
        rmse=report(
            result("report/rmse_by_pollutant.png"),
            caption="../report/rmse_by_pollutant.rst",
            category="Errors",
        ),
        rmse_csv=result("report/rmse_table.csv"),
        rmse_html=report(
            result("report/rmse_table.html"),
            caption="../report/rmse_table.rst",
            category="Errors",
        ),
        error_map=report(
            result("report/error_map.png"),
            caption="../report/error_map.rst",
            category="Errors",
        ),
        gain_by_elevation=report(
            result("report/gain_by_elevation.png"),
            caption="../report/gain_by_elevation.rst",
            category="Errors",
        ),
        gain_by_region=report(
            result("report/gain_by_region.png"),
            caption="../report/gain_by_region.rst",
            category="Errors",
        ),
        regions_csv=result("report/gain_by_region.csv"),
        significance_map=report(
            result("report/gain_significance.png"),
            caption="../report/gain_significance.rst",
            category="Errors",
        ),
        significance_csv=result("report/gain_significance.csv"),
        gates=report(
            result("report/gates.png"), caption="../report/gates.rst", category="Gates"
        ),
        variants=report(
            result("report/variants.png"),
            caption="../report/variants.rst",
            category="Variants",
        ),
        variants_csv=result("report/variants.csv"),
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
