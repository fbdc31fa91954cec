# The baseline (no TopoFlow), trained only when the config names no baseline.checkpoint.


rule train_baseline:
    input:
        config=expand(rules.resolve_shared_config.output.config, scope="baseline"),
        cache=rules.build_cache.output.meta,
    output:
        ckpt=result("baseline/baseline.ckpt"),
        orders=result("baseline/wind_orders.npz"),
        metrics=result("baseline/metrics.csv"),
    log:
        "logs/train_baseline.log",
    benchmark:
        result("benchmarks/train_baseline.tsv")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=240,
    params:
        launcher=launcher,
        cache_dir=input_dir("cache"),
        out_dir=output_dir("ckpt"),
        state_dir=state_dir("baseline"),
    shell:
        "{params.launcher}aqnet train-baseline --config {input.config}"
        " --cache {params.cache_dir}"
        " --out-dir {params.out_dir} --state-dir {params.state_dir} > {log} 2>&1"
