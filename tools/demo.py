"""The main job on the built-in synthetic data set: generate, train, evaluate, predict."""

import argparse
import json


def parse_args():
    from ann_seg.apis.demo import DEMO_CONFIG

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--config", default=DEMO_CONFIG)
    parser.add_argument("--data-root", default="data/synthetic_long_range")
    parser.add_argument("--work-dir", default="work_dirs/demo")
    parser.add_argument("--num-train", type=int, default=400)
    parser.add_argument("--num-val", type=int, default=60)
    parser.add_argument("--max-iters", type=int, help="override the config's schedule")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args()


def main():
    args = parse_args()
    from ann_seg.apis.demo import run_demo

    summary = run_demo(
        args.config,
        args.data_root,
        args.work_dir,
        args.num_train,
        args.num_val,
        args.max_iters,
        args.seed,
    )
    print(json.dumps(summary, indent=2))
    print(
        f"demo mIoU: {summary['metrics'].get('mIoU', float('nan')):.2f} "
        f"(predicted label maps in {summary['predictions']})"
    )


if __name__ == "__main__":
    main()
