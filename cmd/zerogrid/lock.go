package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid"
)

const lockSynopsis = `lock NAME [--ttl 5s] [--wait D | --try] [--addr ADDR] -- COMMAND [ARGS...]

Runs COMMAND while holding the lock NAME; the lease is renewed every third of
--ttl while it runs. COMMAND gets the fencing token in its environment:
  ZEROGRID_FENCE_TOKEN=N  ZEROGRID_LOCK_NAME=NAME  ZEROGRID_FENCE=NAME:N
so that it can guard its writes: zerogrid put MAP KEY VALUE --fence "$ZEROGRID_FENCE".
If the lease is lost while COMMAND runs, COMMAND gets SIGTERM and zerogrid lock
fails. Otherwise it releases the lock and exits with COMMAND's status.`

// commandExitError carries a child command's exit status out of Run.
type commandExitError struct {
	cmd  string
	code int
}

func (e *commandExitError) Error() string {
	return fmt.Sprintf("%s exited with status %d", e.cmd, e.code)
}

func runLock(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	var command []string
	for i, a := range args {
		if a == "--" {
			args, command = args[:i], args[i+1:]
			break
		}
	}
	var (
		cf   clientFlags
		ttl  time.Duration
		wait time.Duration
		try  bool
	)
	fs := newFlags("lock", lockSynopsis, stderr)
	cf.register(fs)
	fs.DurationVar(&ttl, "ttl", grid.DefaultLeaseTTL, "lease: a holder that stops renewing loses the lock after this long")
	fs.DurationVar(&wait, "wait", 0, "give up if the lock is not acquired within this long (0: wait as long as it takes)")
	fs.BoolVar(&try, "try", false, "fail at once if another client holds the lock")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 1 || len(command) == 0 {
		fs.Usage()
		return errUsage
	}
	name := pos[0]
	if err := errors.Join(grid.ValidateLockName(name), grid.ValidateLeaseTTL(ttl)); err != nil {
		return fmt.Errorf("%w: %w", errUsage, err)
	}

	dctx, cancel := context.WithTimeout(ctx, cf.timeout)
	cl, err := cf.dial(dctx)
	cancel()
	if err != nil {
		return err
	}
	defer cl.Close()

	actx, cancel := ctx, context.CancelFunc(func() {})
	if wait > 0 {
		actx, cancel = context.WithTimeout(ctx, wait)
	}
	acquire := cl.Lock
	if try {
		acquire = cl.TryLock
	}
	l, err := acquire(actx, name, client.WithLeaseTTL(ttl))
	cancel()
	if err != nil {
		return err
	}
	fmt.Fprintf(stderr, "zerogrid: holding lock %s, token %d\n", name, l.Token())

	runErr := runHolding(ctx, l, command, stdout, stderr)
	uctx, cancel := context.WithTimeout(context.Background(), cf.timeout)
	defer cancel()
	if err := l.Unlock(uctx); err != nil && runErr == nil {
		runErr = err
	}
	return runErr
}

// runHolding runs command until it exits, the lease is lost, or ctx ends;
// in the last two cases the command gets SIGTERM first.
func runHolding(ctx context.Context, l *client.Lock, command []string, stdout, stderr io.Writer) error {
	cmd := exec.Command(command[0], command[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, stdout, stderr
	fence := l.Name() + ":" + strconv.FormatUint(l.Token(), 10)
	cmd.Env = append(os.Environ(), "ZEROGRID_FENCE_TOKEN="+strconv.FormatUint(l.Token(), 10),
		"ZEROGRID_LOCK_NAME="+l.Name(), "ZEROGRID_FENCE="+fence)
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", command[0], err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }() // owned: ends when the command exits, which every path below waits for
	var cause error
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return &commandExitError{cmd: command[0], code: ee.ExitCode()}
		}
		return err
	case <-l.Lost():
		cause = fmt.Errorf("lock %s (token %d) lost while %s ran: %w", l.Name(), l.Token(), command[0], grid.ErrLockNotHeld)
	case <-ctx.Done():
		cause = ctx.Err()
	}
	fmt.Fprintf(stderr, "zerogrid: %v; stopping %s\n", cause, command[0])
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
	case <-time.After(lockStopGrace):
		// It ignored SIGTERM: it must not go on without the lock.
		fmt.Fprintf(stderr, "zerogrid: %s still running %v after SIGTERM; killing it\n", command[0], lockStopGrace)
		_ = cmd.Process.Kill()
		<-exited
	}
	return cause
}

// lockStopGrace is how long a command that lost its lock has to exit after
// SIGTERM before it is killed.
const lockStopGrace = 5 * time.Second

// fenceFlag is the value of --fence NAME:TOKEN.
type fenceFlag struct {
	name  string
	token uint64
}

func (f *fenceFlag) String() string {
	if f.name == "" {
		return ""
	}
	return f.name + ":" + strconv.FormatUint(f.token, 10)
}

// Set parses NAME:TOKEN; the name may itself contain ':' (the token follows
// the last one).
func (f *fenceFlag) Set(s string) error {
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return fmt.Errorf("%w: %q is not NAME:TOKEN", grid.ErrInvalidFence, s)
	}
	tok, err := strconv.ParseUint(s[i+1:], 10, 64)
	if err != nil {
		return fmt.Errorf("%w: token %q is not a positive integer", grid.ErrInvalidFence, s[i+1:])
	}
	if err := grid.ValidateFence(s[:i], tok); err != nil {
		return err
	}
	f.name, f.token = s[:i], tok
	return nil
}

// register adds --fence to fs.
func (f *fenceFlag) register(fs *flag.FlagSet) {
	fs.Var(f, "fence", "guard the write with a fencing token NAME:TOKEN (zerogrid lock passes $ZEROGRID_FENCE)")
}

// options returns the write options the flag asks for.
func (f *fenceFlag) options() []client.WriteOption {
	if f.name == "" {
		return nil
	}
	return []client.WriteOption{client.WithFence(f.name, f.token)}
}
