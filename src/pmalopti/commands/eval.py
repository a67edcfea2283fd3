"""`pmalopti eval`: validation loss / perplexity of checkpoints on a text file."""

from __future__ import annotations

HELP = "validation loss and perplexity of Hugging Face checkpoints on a data file"


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval",
        help=HELP,
        description=HELP
        + ". Each checkpoint tokenizes the text with its own tokenizer; documents are joined with"
        " EOS and packed into blocks of --max-length tokens. A run folder stands for all its"
        " checkpoints. Example: pmalopti eval runs/tiny/checkpoint-400 merged/ --data runs/tiny/data/val.jsonl",
    )
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="model folders or run folders")
    p.add_argument(
        "--data",
        required=True,
        metavar="FILE",
        help=".txt, .jsonl, .parquet or a saved datasets folder",
    )
    p.add_argument(
        "--text-field", default="text", help="column / JSON field with the text (default: text)"
    )
    p.add_argument("--batch-size", type=int, default=8, help="blocks per forward pass (default: 8)")
    p.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per block (default: the models' context, at most 1024; beyond a model's "
        "context: refused, since the loss there is meaningless)",
    )
    p.add_argument(
        "--max-blocks",
        type=int,
        default=0,
        help="evaluate at most this many blocks (0 = all; negative: refused)",
    )
    p.add_argument(
        "--device",
        choices=["auto", "cpu", "cuda"],
        default="auto",
        help="where to run (default: auto)",
    )
    p.add_argument("--json", metavar="OUT", help="also write the results as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from pmalopti.lm.evaluate import evaluate_checkpoints
    from pmalopti.pma.report import markdown_table
    from pmalopti.runtime.fs import atomic_write_json, check_output_file

    if args.json:
        check_output_file(
            args.json, force=True, inputs=[*args.checkpoints, args.data], flag="--json"
        )
    rows = evaluate_checkpoints(
        args.checkpoints,
        args.data,
        batch_size=args.batch_size,
        max_length=args.max_length,
        text_field=args.text_field,
        max_blocks=args.max_blocks or None,
        device=args.device,
    )
    if len(rows) == 1:
        r = rows[0]
        print(
            f"{r['checkpoint']}: loss {r['loss']:.4f}, perplexity {r['perplexity']:.3f} on {r['tokens']} tokens"
            f" (blocks of {r['max_length']})"
        )
    else:
        print(
            markdown_table(
                ["checkpoint", "tokens", "loss", "perplexity"],
                [[r["checkpoint"], r["tokens"], r["loss"], r["perplexity"]] for r in rows],
            ),
            end="",
        )
    if args.json:
        from pathlib import Path

        atomic_write_json(Path(args.json), rows)
    return 0
