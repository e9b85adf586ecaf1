package test

import (
	"os/exec"
	"strings"
	"testing"
)

const module = "github.com/zerogrid/zerogrid"

// TestImportGraph enforces DESIGN.md's one-way imports:
// cmd → node → {query, replication} → grid; client → grid; grid does no I/O.
func TestImportGraph(t *testing.T) {
	out, err := exec.Command("go", "list", "-f", "{{.ImportPath}}:{{join .Imports \" \"}}:{{join .Deps \" \"}}", module+"/...").CombinedOutput()
	if err != nil {
		t.Fatalf("go list: %v\n%s", err, out)
	}
	rules := []struct {
		pkg       string // package (prefix match on module-relative path)
		forbidden []string
		deps      bool // check transitive dependencies, not just direct imports
	}{
		{"client", []string{module + "/node", module + "/replication", module + "/query", module + "/cmd"}, true},
		{"grid", []string{module + "/node", module + "/replication", module + "/query", module + "/client"}, true},
		{"replication", []string{module + "/node", module + "/client", module + "/query", module + "/cmd"}, true},
		{"query", []string{module + "/node", module + "/client", module + "/cmd"}, true},
		// hashicorp/raft's types stay inside replication (issue 10).
		{"node", []string{module + "/cmd", module + "/client", "github.com/hashicorp/raft"}, false},
		{"cmd", []string{"github.com/hashicorp/raft"}, false},
	}
	// The pure grid package itself must not touch disks or sockets.
	gridIO := []string{"net", "os", "os/exec", "io/ioutil", "net/http", "google.golang.org/grpc", "syscall"}
	checked := 0
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		parts := strings.SplitN(line, ":", 3)
		if len(parts) != 3 {
			continue
		}
		pkg, imports, deps := parts[0], strings.Fields(parts[1]), strings.Fields(parts[2])
		rel := strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")
		for _, r := range rules {
			if rel != r.pkg && !strings.HasPrefix(rel, r.pkg+"/") {
				continue
			}
			list := imports
			if r.deps {
				list = deps
			}
			for _, imp := range list {
				for _, bad := range r.forbidden {
					if imp == bad || strings.HasPrefix(imp, bad+"/") {
						t.Errorf("%s imports %s (forbidden by DESIGN.md)", pkg, imp)
					}
				}
			}
			checked++
		}
		if rel == "grid" {
			for _, imp := range imports {
				for _, bad := range gridIO {
					if imp == bad {
						t.Errorf("grid imports %s: grid must do no I/O", imp)
					}
				}
			}
		}
	}
	if checked < 5 {
		t.Fatalf("only %d packages checked: go list output not understood", checked)
	}
}
