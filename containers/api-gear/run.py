#!/usr/bin/env python3
"""api-gear: read the destination through the API with fw-gear's GearContext, write info.

The job-scoped key comes from config.json (inputs.key.key); GearContext builds the
flywheel client from it. Nothing here prints the key.
"""

import json
import sys

from fw_gear import GearContext


def main() -> int:
    with GearContext() as context:
        client = context.client
        if client is None:
            print("api-gear: no API key in config.json", file=sys.stderr)
            return 2
        dest = context.config.get_destination_container()
        parent_labels = {k: v for k, v in (dest.get("parents") or {}).items() if v}
        me = client.get_current_user()
        note = context.config.opts.get("note", "")
        dest.update_info({"api_gear": {"note": note, "label": dest.label, "user": me.id,
                                       "parents": sorted(parent_labels)}})
        report = {"destination": {"id": dest.id, "label": dest.label,
                                  "type": dest.container_type},
                  "user": me.id, "files": sorted(f.name for f in (dest.files or []))}
        out = context.output_dir / "api-report.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"api-gear: wrote info.api_gear on {dest.container_type} {dest.label}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
