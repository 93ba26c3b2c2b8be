"""A fork server for the preemption suite: it imports `dp-train` once (torch, diffusers and timm take seconds to import), then runs each
command it reads on stdin, `{"argv": [...], "env": {...}, "stdout": path, "stderr": path}`, in a forked child, a fresh process that
starts at `dp_train(argv)`, and answers `{"status": exit status, negative for a signal}`. Nothing runs torch before the fork."""
import json, os, sys, traceback
from deliberate_practice.cli import dp_train
import deliberate_practice.trainer, deliberate_practice.ablation, matplotlib.figure   # what dp_train imports when it runs

def serve():
    for line in sys.stdin:
        req = json.loads(line)
        pid = os.fork()
        if pid == 0:                                                   # the child: the command, as the console script runs it
            os.environ.update(req['env'])
            for fd, path in ((1, req['stdout']), (2, req['stderr'])):
                f = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC); os.dup2(f, fd); os.close(f)
            code = 0
            try: dp_train(req['argv'])
            except SystemExit as e: code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException: traceback.print_exc(); code = 1
            sys.stdout.flush(); sys.stderr.flush()
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        print(json.dumps(dict(status=os.waitstatus_to_exitcode(status))), flush=True)

if __name__ == '__main__': serve()
