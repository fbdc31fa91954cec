# Resolved configs: the file each stage reads (aqnet.config.load_resolved). Each rule reruns only
# when its resolved content changes (the digest param; the content itself is a derived param, which
# Snakemake does not track), so an unchanged config is not rewritten and triggers no rerun.
# A variant has two: config.yaml (all of it: evaluate, the budget gate, the report) and run.yaml
# (without seeds, budget, wall-time arithmetic and report settings: the gates and the fine-tune),
# so changing those reruns no finished fine-tune (aqnet.provenance.run_config).


rule resolve_shared_config:
    output:
        config=result("config/{scope}.yaml"),
    log:
        "logs/resolve_config/{scope}.log",
    localrule: True
    conda:
        ENV
    params:
        digest=lambda wildcards: digest(shared_config(wildcards.scope)),
        resolved=lambda wildcards, output: shared_config(wildcards.scope),
    script:
        "../scripts/resolve_config.py"


rule resolve_config:
    output:
        config=result("variants/{variant}/config.yaml"),
    log:
        "logs/resolve_config/{variant}.log",
    localrule: True
    conda:
        ENV
    params:
        digest=lambda wildcards: digest(resolved_config(wildcards.variant)),
        resolved=lambda wildcards, output: resolved_config(wildcards.variant),
    script:
        "../scripts/resolve_config.py"


rule resolve_run_config:
    output:
        config=result("variants/{variant}/run.yaml"),
    log:
        "logs/resolve_config/{variant}.run.log",
    localrule: True
    conda:
        ENV
    params:
        digest=lambda wildcards: digest(run_config(wildcards.variant)),
        resolved=lambda wildcards, output: run_config(wildcards.variant),
    script:
        "../scripts/resolve_config.py"
