"""`python eval.py ckpt_path=PATH [overrides]`: evaluate a checkpoint. See README.md and conf/eval.yaml."""

from vaelab.eval import main

if __name__ == "__main__":
    main()
