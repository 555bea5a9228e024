"""Online mode (RLDP): SAC learns while the model fine-tunes, in one episode; saves the model.

    python examples/online_finetune.py [--controller sac] [--max-updates 200]
"""

import argparse

from agents.online import finetune_online

if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--controller", default="sac", help="sac, td3, tqc or a heuristic name")
    parser.add_argument("--max-updates", type=int, default=200)
    parser.add_argument("--out", default="runs/examples/online")
    args = parser.parse_args()
    report = finetune_online("dp_gym/TinyText-v0", args.controller, args.out,
                             env_overrides={"max_updates": args.max_updates})
    print(f"val ppl {report['base_val_ppl']:.1f} -> {report['val_ppl']:.1f}; epsilon {report['epsilon']:.3f} "
          f"(delta {report['delta']:g}, {report['accounting']}); model saved in {args.out}/model")
