package test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/zerogrid/zerogrid/grid/gridtls"
	"github.com/zerogrid/zerogrid/node"
)

// TestCLIExitCodesAndJSON runs the binary as a script would: each kind of
// failure exits with its documented code, listings print JSON that
// parses, version names the release, and the shell completion completes
// commands, their words and their flags.
func TestCLIExitCodesAndJSON(t *testing.T) {
	lc, _ := startCluster(t, 3, "kv")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	addr := strings.Join(lc.Addrs(), ",")
	run := func(env []string, args ...string) (string, int) {
		t.Helper()
		cmd := exec.CommandContext(ctx, binary, args...)
		cmd.Env = append(cmd.Environ(), env...)
		var out bytes.Buffer
		cmd.Stdout, cmd.Stderr = &out, &out
		err := cmd.Run()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return out.String(), 0
		case errors.As(err, &ee):
			return out.String(), ee.ExitCode()
		}
		t.Fatalf("zerogrid %s: %v", strings.Join(args, " "), err)
		return "", -1
	}
	readOnly := filepath.Join(t.TempDir(), "reader")
	if err := gridtls.IssueClient(caDir, readOnly, "reader", []string{"read"}); err != nil {
		t.Fatal(err)
	}
	runCLI(t, ctx, "put", "kv", "here", "v", "--addr", addr)
	for _, tc := range []struct {
		name string
		env  []string
		args []string
		code int
	}{
		{"done", nil, []string{"get", "kv", "here", "--addr", addr}, 0},
		{"usage", nil, []string{"get", "kv", "--addr", addr}, 2},
		{"unknown flag", nil, []string{"get", "kv", "k", "--no-such-flag"}, 2},
		{"missing key", nil, []string{"get", "kv", "absent", "--addr", addr}, 3},
		{"unknown map", nil, []string{"get", "nomap", "k", "--addr", addr}, 3},
		{"key too large", nil, []string{"put", "kv", strings.Repeat("k", 64<<10), "v", "--addr", addr}, 4},
		{"map exists", nil, []string{"map", "create", "kv", "--addr", addr}, 4},
		{"role missing", []string{"ZEROGRID_TLS_DIR=" + readOnly}, []string{"put", "kv", "k", "v", "--addr", addr}, 5},
	} {
		out, code := run(tc.env, tc.args...)
		if code != tc.code {
			cmdline := strings.Join(tc.args, " ")
			t.Errorf("%s: zerogrid %s exited %d, want %d:\n%s", tc.name, cmdline[:min(80, len(cmdline))], code, tc.code, out)
		}
	}

	var maps []string
	if err := json.Unmarshal([]byte(runCLI(t, ctx, "map", "list", "--json", "--addr", addr)), &maps); err != nil || !slices.Contains(maps, "kv") {
		t.Fatalf("map list --json: %v %v", maps, err)
	}
	var status struct {
		Table struct{ Partitions []any }
		Nodes []struct {
			ID     string
			Error  string
			Status struct{ Groups []any }
		}
	}
	if err := json.Unmarshal([]byte(runCLI(t, ctx, "status", "--json", "--addr", addr)), &status); err != nil {
		t.Fatalf("status --json: %v", err)
	}
	if len(status.Nodes) != 3 || len(status.Table.Partitions) == 0 {
		t.Fatalf("status --json: %d nodes, %d partitions", len(status.Nodes), len(status.Table.Partitions))
	}
	for _, nd := range status.Nodes {
		if nd.Error != "" || len(nd.Status.Groups) == 0 {
			t.Fatalf("status --json: node %s: error %q, %d groups", nd.ID, nd.Error, len(nd.Status.Groups))
		}
	}
	var audit []map[string]any
	if err := json.Unmarshal([]byte(runCLI(t, ctx, "audit", "--json", "--addr", addr)), &audit); err != nil || len(audit) == 0 {
		t.Fatalf("audit --json: %d records, %v", len(audit), err)
	}
	var version struct{ Version, Commit, Go, Platform string }
	if err := json.Unmarshal([]byte(runCLI(t, ctx, "version", "--json")), &version); err != nil || version.Version != node.Version || version.Commit == "" {
		t.Fatalf("version --json: %+v %v", version, err)
	}

	if _, err := exec.LookPath("bash"); err != nil {
		t.Skip("no bash for the completion check")
	}
	script := runCLI(t, ctx, "completion", "bash")
	for line, want := range map[string]string{
		"zerogrid sta":           "status",
		"zerogrid get kv k --st": "--stale",
		"zerogrid node dr":       "drain",
		"zerogrid job run --ma":  "--map",
		"zerogrid map ":          "create list",
	} {
		words := strings.Fields(line)
		if strings.HasSuffix(line, " ") {
			words = append(words, "")
		}
		words[0] = binary
		quoted := make([]string, len(words))
		for i, w := range words {
			quoted[i] = "'" + w + "'"
		}
		sh := fmt.Sprintf("%s\nCOMP_WORDS=(%s); COMP_CWORD=%d; _zerogrid; echo \"${COMPREPLY[*]}\"\n", script, strings.Join(quoted, " "), len(words)-1)
		out, err := exec.CommandContext(ctx, "bash", "-c", sh).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != want {
			t.Errorf("completing %q: got %q (%v), want %q", line, strings.TrimSpace(string(out)), err, want)
		}
	}
}
