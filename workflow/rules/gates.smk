# The cheap gates in front of the GPU stages. Each writes its JSON report on every outcome: the
# declared output (deleted by Snakemake when the job fails) and a copy beside the log (a log:
# entry, which Snakemake keeps); on failure the shell prints the verdict line and where it is.


rule verify_wind_order:
    input:
        cache=rules.build_cache.output.meta,
        reference=reference_orders(),
        # the model section: in wind_scan reference mode the applied orders are checked
        config=expand(rules.resolve_shared_config.output.config, scope="wind_order"),
    output:
        report=result("gates/verify_wind_order.json"),
    log:
        log="logs/verify_wind_order.log",
        report="logs/verify_wind_order.json",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=10,
    params:
        launcher=launcher,
        cache_dir=input_dir("cache"),
    shell:
        "{params.launcher}aqnet verify-wind-order --cache {params.cache_dir}"
        " --reference {input.reference} --config {input.config}"
        " --report {output.report} --report-copy {log.report} > {log.log} 2>&1"


rule audit_checkpoint:
    input:
        config=rules.resolve_run_config.output.config,
        cache=rules.build_cache.output.meta,
        checkpoint=baseline_checkpoint(),
    output:
        report=result("variants/{variant}/audit_checkpoint.json"),
    log:
        log="logs/audit_checkpoint/{variant}.log",
        report="logs/audit_checkpoint/{variant}.json",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=4000,
        runtime=10,
    params:
        launcher=launcher,
        cache_dir=input_dir("cache"),
    shell:
        "{params.launcher}aqnet audit-checkpoint --config {input.config}"
        " --cache {params.cache_dir}"
        " --checkpoint {input.checkpoint} --report {output.report} --report-copy {log.report}"
        " > {log.log} 2>&1"


rule smoke_forward:
    input:
        config=rules.resolve_run_config.output.config,
        cache=rules.build_cache.output.meta,
        checkpoint=baseline_checkpoint(),
        audit=rules.audit_checkpoint.output.report,
        wind_order=rules.verify_wind_order.output.report,
    output:
        report=result("variants/{variant}/smoke_forward.json"),
    log:
        log="logs/smoke_forward/{variant}.log",
        report="logs/smoke_forward/{variant}.json",
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=20,
    params:
        launcher=launcher,
        cache_dir=input_dir("cache"),
    shell:
        "{params.launcher}aqnet smoke-forward --config {input.config}"
        " --cache {params.cache_dir}"
        " --checkpoint {input.checkpoint} --audit {input.audit}"
        " --report {output.report} --report-copy {log.report} > {log.log} 2>&1"
