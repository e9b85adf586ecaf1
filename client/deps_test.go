package client_test

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

const module = "github.com/zerogrid/zerogrid"

// TestImports keeps the client a thin library: it may import the standard
// library, gRPC, protobuf and the grid vocabulary, and nothing it reaches in
// this module may be the node, replication or query code.
func TestImports(t *testing.T) {
	allowed := func(path string) bool {
		first, _, _ := strings.Cut(path, "/")
		switch {
		case !strings.Contains(first, "."): // standard library
			return true
		case path == module+"/grid", path == module+"/grid/gridpb", path == module+"/grid/gridtls":
			return true
		case path == "google.golang.org/grpc", strings.HasPrefix(path, "google.golang.org/grpc/"),
			strings.HasPrefix(path, "google.golang.org/protobuf/"):
			return true
		}
		return false
	}
	for _, imp := range packageImports(t, ".") {
		if !allowed(imp) {
			t.Errorf("client imports %s", imp)
		}
	}

	// Everything the client reaches inside the module must be grid.
	seen := map[string]bool{}
	queue := []string{module + "/client"}
	for len(queue) > 0 {
		pkg := queue[0]
		queue = queue[1:]
		if seen[pkg] {
			continue
		}
		seen[pkg] = true
		if pkg != module+"/client" && pkg != module+"/grid" && !strings.HasPrefix(pkg, module+"/grid/") {
			t.Errorf("client depends on %s", pkg)
			continue
		}
		dir := filepath.Join("..", filepath.FromSlash(strings.TrimPrefix(strings.TrimPrefix(pkg, module), "/")))
		for _, imp := range packageImports(t, dir) {
			if strings.HasPrefix(imp, module+"/") {
				queue = append(queue, imp)
			}
		}
	}
}

// packageImports lists the imports of the non-test Go files in dir.
func packageImports(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	fset := token.NewFileSet()
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !strings.HasSuffix(name, ".go") || strings.HasSuffix(name, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(fset, filepath.Join(dir, name), nil, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, err := strconv.Unquote(imp.Path.Value)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
	}
	return out
}
