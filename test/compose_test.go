package test

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"
)

// TestComposeCluster deploys the way deploy/compose.yaml tells a user to:
// the node image built by deploy/build-images.sh (FROM scratch), the
// certificates made by deploy/certs.sh, three Pi-Zero-sized containers
// under docker-compose; it writes through the CLI image on the cluster's
// network, kills one node's container (SIGKILL), reads every write back
// from the other two, and tears everything down.
func TestComposeCluster(t *testing.T) {
	if _, err := run("docker", "info", "--format", "{{.ServerVersion}}"); err != nil {
		t.Skipf("needs a docker engine: %v", err)
	}
	compose, err := exec.LookPath("docker-compose")
	if err != nil {
		t.Skip("needs docker-compose (Debian package docker-compose)")
	}
	if runtime.GOARCH != "amd64" && runtime.GOARCH != "arm64" {
		t.Skipf("the image is built for this machine's architecture; %s is not one the script tags", runtime.GOARCH)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	tag := fmt.Sprintf("zerogrid-compose-test-%d", os.Getpid())
	image := tag + ":" + runtime.GOARCH
	project := strings.ReplaceAll(tag, "-", "")
	certs := t.TempDir()
	env := append(os.Environ(), "ONLY="+runtime.GOARCH, "IMAGE="+image, "ZEROGRID_IMAGE="+image, "ZEROGRID_CERTS="+certs)
	sh := func(timeout time.Duration, name string, args ...string) (string, error) {
		t.Helper()
		ctx, cancel := context.WithTimeout(context.Background(), timeout)
		defer cancel()
		cmd := exec.CommandContext(ctx, name, args...)
		cmd.Env, cmd.Dir = env, root
		out, err := cmd.CombinedOutput()
		if err != nil {
			return string(out), fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err, out)
		}
		return strings.TrimSpace(string(out)), nil
	}
	must := func(timeout time.Duration, name string, args ...string) string {
		t.Helper()
		out, err := sh(timeout, name, args...)
		if err != nil {
			t.Fatal(err)
		}
		return out
	}
	must(5*time.Minute, "deploy/build-images.sh", tag)
	t.Cleanup(func() { _, _ = run("docker", "rmi", "-f", image) })
	must(2*time.Minute, "deploy/certs.sh", certs)
	dc := func(args ...string) []string {
		return append([]string{"-f", "deploy/compose.yaml", "-p", project}, args...)
	}
	t.Cleanup(func() {
		if t.Failed() {
			out, _ := sh(time.Minute, compose, dc("logs", "--tail", "40")...)
			t.Logf("compose logs:\n%s", out)
		}
		if out, err := sh(2*time.Minute, compose, dc("down", "-v", "--remove-orphans")...); err != nil {
			t.Logf("compose down: %v\n%s", err, out)
		}
	})
	must(3*time.Minute, compose, dc("up", "-d", "n1", "n2", "n3")...)

	// The CLI image on the cluster's network, as the compose file's cli
	// service (docker run is quicker than docker-compose run).
	cli := func(args ...string) (string, error) {
		return sh(time.Minute, "docker", append([]string{"run", "--rm", "--network", project + "_grid",
			"-v", certs + "/client:/tls:ro", "-e", "ZEROGRID_TLS_DIR=/tls", "-e", "ZEROGRID_ADDR=n1:7100,n2:7100,n3:7100",
			image}, args...)...)
	}
	deadline := time.Now().Add(2 * time.Minute)
	for {
		_, err := cli("map", "create", "kv", "--timeout", "20s")
		if err == nil || strings.Contains(err.Error(), "already exists") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the compose cluster never took a map: %v", err)
		}
		time.Sleep(2 * time.Second)
	}
	const keys = 8
	for i := range keys {
		if out, err := cli("put", "kv", fmt.Sprint("key-", i), fmt.Sprint("value-", i), "--timeout", "30s"); err != nil {
			t.Fatalf("put %d: %v\n%s", i, err, out)
		}
	}
	must(time.Minute, compose, dc("kill", "-s", "SIGKILL", "n2")...)
	for i := range keys {
		out, err := cli("get", "kv", fmt.Sprint("key-", i), "--timeout", "60s")
		if err != nil || out != fmt.Sprint("value-", i) {
			t.Fatalf("get key-%d with n2 killed: %q, %v", i, out, err)
		}
	}
	status, err := cli("status")
	if err != nil {
		t.Fatalf("status with n2 killed: %v", err)
	}
	t.Logf("status with n2 killed:\n%s", status)
}
