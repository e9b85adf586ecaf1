package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/zerogrid/zerogrid/grid"
)

const usage = `zerogrid — a sharded, Raft-replicated data grid for fleets of small computers.

Usage:
  zerogrid demo [--keep]                  start a local 3-node cluster and walk through it
  zerogrid cert ca|node|client ...        create the cluster CA, node and client certificates
  zerogrid node --id ID --listen ADDR --data-dir DIR --tls-dir DIR --peers ID=ADDR,...
                [--join-token-file F] [--partitions 32] [--replicas 3] [--profile default|small|test]
                [--ops-listen ADDR]       run a founding node of a new cluster (--ops-listen:
                                          /metrics, /healthz, /readyz over HTTP)
  zerogrid node --id ID --listen ADDR --data-dir DIR --tls-dir DIR --join ADDR --join-token-file F
                [--label zone=a]          join a running cluster through any member
  zerogrid nodes            --addr ADDR   nodes: capabilities, state, load
  zerogrid node drain ID    --addr ADDR   move every replica off a node (progress bar)
  zerogrid node undrain ID  --addr ADDR   cancel a drain
  zerogrid node remove ID   --addr ADDR   retire a drained (or dead) node
  zerogrid map create NAME  --addr ADDR   create a map (a named keyspace)
  zerogrid map list         --addr ADDR   list maps
  zerogrid put MAP KEY VALUE [--ttl 30s] [--fence NAME:TOKEN] --addr ADDR
                                          write a value (VALUE "-" reads stdin)
  zerogrid get MAP KEY [--stale] --addr ADDR
  zerogrid del MAP KEY [--fence NAME:TOKEN] --addr ADDR
  zerogrid scan MAP [PREFIX] [--limit N] [--stale] --addr ADDR
  zerogrid watch MAP [PREFIX] [--from V | --cursor P:V,...] --addr ADDR
                                          print every change as it happens, one per line
  zerogrid status           --addr ADDR   nodes, partitions, leaders, applied index, lag
  zerogrid audit [--limit N] --addr ADDR  who changed membership, ran code, backed up, restored, was refused
  zerogrid check [--no-repair] --addr ADDR  compare every partition's replicas at one applied index
  zerogrid recover PARTITION [--from NODE] [--yes] --addr ADDR
                                          rebuild a partition that lost its majority from its
                                          best surviving replica (unsafe; dry run without --yes)
  zerogrid job run --map MAP --agg 'sum(v.amount) by v.shop' [--filter 'v.region == "eu"'] [--into MAP]
  zerogrid job run --map MAP --script wordcount.star [--json]
  zerogrid job explain --map MAP --agg count        which node runs each partition's task, and why
  zerogrid apply MAP KEY --script FILE [--args JSON]  run an entry processor atomically on one key
  zerogrid lock NAME [--ttl 5s] [--wait D|--try] -- COMMAND...
                                          run COMMAND holding a lock; $ZEROGRID_FENCE_TOKEN is its token
  zerogrid backup --out FILE --addr ADDR  consistent, checksummed backup of every map (progress bar)
  zerogrid restore FILE     --addr ADDR   verify a backup, then load it into a new cluster

--addr accepts a comma-separated list of any cluster members; the client
routes every request to the right partition leader itself. Client commands
connect with mutual TLS using --tls-dir DIR (default $ZEROGRID_TLS_DIR), or
--insecure to nodes started with --insecure. Listings take --json.

  zerogrid version [--json]               the release and the commit it was built from
  zerogrid completion bash|zsh            shell completion: source <(zerogrid completion bash)

Exit codes: 0 done, 1 failed, 2 usage error, 3 not found (key, map, node),
4 refused (invalid, too large, conflicting, not allowed now), 5 no valid
credential or role, 6 unavailable (no leader, overloaded, disk full, timed
out: retry), 7 outcome unknown (a write may or may not have been applied);
lock exits with its command's code.
Run "zerogrid COMMAND --help" for a command's flags.
`

// Run executes the zerogrid command line. It is main without the process:
// tests call it directly.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	case "node":
		return runNode(ctx, rest, stdout, stderr)
	case "cert":
		return runCert(ctx, rest, stdout, stderr)
	case "nodes":
		return runNodes(ctx, rest, stdout, stderr)
	case "demo":
		return runDemo(ctx, rest, stdout, stderr)
	case "map":
		return runMap(ctx, rest, stdout, stderr)
	case "put":
		return runPut(ctx, rest, stdout, stderr)
	case "get":
		return runGet(ctx, rest, stdout, stderr)
	case "del", "delete":
		return runDel(ctx, rest, stdout, stderr)
	case "scan":
		return runScan(ctx, rest, stdout, stderr)
	case "status":
		return runStatus(ctx, rest, stdout, stderr)
	case "watch":
		return runWatch(ctx, rest, stdout, stderr)
	case "job":
		return runJob(ctx, rest, stdout, stderr)
	case "apply":
		return runApply(ctx, rest, stdout, stderr)
	case "lock":
		return runLock(ctx, rest, stdout, stderr)
	case "backup":
		return runBackup(ctx, rest, stdout, stderr)
	case "restore":
		return runRestore(ctx, rest, stdout, stderr)
	case "check":
		return runCheck(ctx, rest, stdout, stderr)
	case "recover":
		return runRecover(ctx, rest, stdout, stderr)
	case "audit":
		return runAudit(ctx, rest, stdout, stderr)
	case "version":
		return runVersion(rest, stdout, stderr)
	case "completion":
		return runCompletion(rest, stdout, stderr)
	default:
		fmt.Fprintf(stderr, "unknown command %q\n\n%s", cmd, usage)
		return errUsage
	}
}

// errUsage marks a command-line mistake (exit code 2).
var errUsage = errors.New("usage error")

// Exit codes, the same for every command (README "Exit codes"): scripts
// can tell a missing key from a refusal, a retryable failure and a write
// whose outcome is unknown.
const (
	exitFailure     = 1 // anything not below
	exitUsage       = 2 // bad flags or arguments
	exitNotFound    = 3 // no such key, map or node
	exitRefused     = 4 // the cluster refused the request as it stands: invalid, too large, conflicting, not allowed now
	exitAuth        = 5 // no valid credential, or a role is missing
	exitUnavailable = 6 // no leader, overloaded, out of disk, too many requests, timed out: retry later
	exitAmbiguous   = 7 // a write's outcome is unknown: it may or may not have been applied
)

func exitCode(err error) int {
	var ce *commandExitError
	switch {
	case errors.Is(err, errUsage) || errors.Is(err, flag.ErrHelp):
		return exitUsage
	case errors.As(err, &ce):
		return ce.code
	case errors.Is(err, grid.ErrAmbiguous):
		return exitAmbiguous
	case errors.Is(err, grid.ErrNotFound), errors.Is(err, grid.ErrUnknownMap), errors.Is(err, grid.ErrUnknownNode):
		return exitNotFound
	case errors.Is(err, grid.ErrUnauthenticated), errors.Is(err, grid.ErrPermissionDenied):
		return exitAuth
	case errors.Is(err, grid.ErrNoLeader), errors.Is(err, grid.ErrOverloaded), errors.Is(err, grid.ErrTooManyRequests),
		errors.Is(err, grid.ErrDiskFull), errors.Is(err, grid.ErrClosed), errors.Is(err, context.DeadlineExceeded):
		return exitUnavailable
	case errors.Is(err, grid.ErrRefused), errors.Is(err, grid.ErrBadRequest), errors.Is(err, grid.ErrEmptyKey),
		errors.Is(err, grid.ErrKeyTooLarge), errors.Is(err, grid.ErrValueTooLarge), errors.Is(err, grid.ErrRequestTooLarge),
		errors.Is(err, grid.ErrInvalidMapName), errors.Is(err, grid.ErrMapExists), errors.Is(err, grid.ErrJobInvalid),
		errors.Is(err, grid.ErrJobLimit), errors.Is(err, grid.ErrContended), errors.Is(err, grid.ErrNodeExists),
		errors.Is(err, grid.ErrNodeBusy), errors.Is(err, grid.ErrTooManyNodes), errors.Is(err, grid.ErrNoEligibleNodes),
		errors.Is(err, grid.ErrJoinRefused), errors.Is(err, grid.ErrCompacted), errors.Is(err, grid.ErrBadPartition):
		return exitRefused
	}
	return exitFailure
}

// newFlags returns a FlagSet that reports errors instead of exiting.
func newFlags(name, synopsis string, stderr io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(stderr, "Usage: zerogrid %s\n\nFlags:\n", synopsis)
		fs.PrintDefaults()
	}
	return fs
}

// parse parses flags that may come before or after positional arguments.
func parse(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			if errors.Is(err, flag.ErrHelp) {
				return nil, flag.ErrHelp
			}
			return nil, fmt.Errorf("%w: %v", errUsage, err)
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

func splitAddrs(s string) []string {
	var out []string
	for _, a := range strings.Split(s, ",") {
		if a = strings.TrimSpace(a); a != "" {
			out = append(out, a)
		}
	}
	return out
}
