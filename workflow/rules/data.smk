# Input data: the generated demo data set (data.source: demo) and the training-ready cache.


rule make_demo_data:
    input:
        config=expand(rules.resolve_shared_config.output.config, scope="data"),
    output:
        files=demo_files(),
    log:
        "logs/make_demo_data.log",
    conda:
        ENV
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        launcher=launcher,
        out_dir=output_dir("files"),
    shell:
        "{params.launcher}aqnet make-demo-data --config {input.config}"
        " --out {params.out_dir} > {log} 2>&1"


rule build_cache:
    input:
        config=expand(rules.resolve_shared_config.output.config, scope="data"),
        files=input_files(),
        mask=mask_files(),
    output:
        meta=result("cache/meta.json"),
    log:
        log="logs/build_cache.log",
        report="logs/build_cache.json",
    benchmark:
        result("benchmarks/build_cache.tsv")
    conda:
        ENV
    threads: 2
    resources:
        mem_mb=8000,
        runtime=120,
    params:
        launcher=launcher,
        out_dir=output_dir("meta"),
    shell:
        "{params.launcher}aqnet build-cache --config {input.config} --inputs {input.files}"
        " --out {params.out_dir} --report {log.report} > {log.log} 2>&1"
