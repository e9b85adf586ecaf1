package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"

	"github.com/zerogrid/zerogrid/node"
)

// buildInfo is what `zerogrid version` reports: the release, the commit
// the binary was built from (when the go command stamped it: go build in a
// git checkout does, go run does not), and the toolchain and platform.
type buildInfo struct {
	Version  string `json:"version"`
	Commit   string `json:"commit"`
	Modified bool   `json:"modified"`
	Time     string `json:"commit_time,omitempty"`
	Go       string `json:"go"`
	Platform string `json:"platform"`
}

func readBuildInfo() buildInfo {
	bi := buildInfo{Version: node.Version, Commit: "unknown", Go: runtime.Version(), Platform: runtime.GOOS + "/" + runtime.GOARCH}
	info, ok := debug.ReadBuildInfo()
	if !ok {
		return bi
	}
	for _, s := range info.Settings {
		switch s.Key {
		case "vcs.revision":
			bi.Commit = s.Value
		case "vcs.modified":
			bi.Modified = s.Value == "true"
		case "vcs.time":
			bi.Time = s.Value
		case "GOARM":
			bi.Platform += "/v" + s.Value
		}
	}
	return bi
}

func runVersion(args []string, stdout, stderr io.Writer) error {
	fs := newFlags("version", "version [--json]", stderr)
	asJSON := fs.Bool("json", false, "print as JSON")
	pos, err := parse(fs, args)
	if err != nil {
		return err
	}
	if len(pos) != 0 {
		return fmt.Errorf("%w: version takes no arguments", errUsage)
	}
	bi := readBuildInfo()
	if *asJSON {
		return printJSON(stdout, bi)
	}
	commit := bi.Commit
	if bi.Modified {
		commit += " (with uncommitted changes)"
	}
	fmt.Fprintf(stdout, "zerogrid %s\ncommit %s\n%s %s\n", bi.Version, commit, bi.Go, bi.Platform)
	return nil
}
