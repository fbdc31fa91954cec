"""Write one resolved config (``snakemake.params.resolved``) to ``snakemake.output.config``.

Run by the rules ``resolve_config`` and ``resolve_shared_config``; the content is computed from
the validated workflow config in ``workflow/rules/common.smk``.
"""

from pathlib import Path

from aqnet.config import dump_config, load_resolved

resolved = dict(snakemake.params.resolved)
out = Path(snakemake.output.config)
dump_config(resolved, out)
# Read it back as a stage would, so a config no stage could load fails here, not later.
load_resolved(out)
with open(snakemake.log[0], "w") as log:
    print(f"resolved config ({resolved['variant']}) written to {out}", file=log)
