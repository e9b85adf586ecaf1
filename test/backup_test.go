package test

import (
	"archive/tar"
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/protobuf/encoding/protodelim"

	"github.com/zerogrid/zerogrid/client"
	"github.com/zerogrid/zerogrid/grid/gridpb"
	"github.com/zerogrid/zerogrid/node/localcluster"
)

// TestBackupRestore backs up a real cluster with the CLI, then offers a
// second, empty cluster (with another partition count) damaged copies of the
// file — truncated, a byte flipped in a part, an altered manifest, a
// manifest altered along with its checksum — each refused with the target
// left empty; then restores the good file with the CLI and finds every map,
// key and value of the source; a second restore is refused.
func TestBackupRestore(t *testing.T) {
	src, sc := startCluster(t, 8, "users", "orders", "empty")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()

	want := map[string]map[string]string{"users": {}, "orders": {}, "empty": {}}
	var mu sync.Mutex
	var wg sync.WaitGroup
	for w := 0; w < 8; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < 1200; i += 8 {
				m, k := "users", fmt.Sprintf("user-%04d", i)
				v := fmt.Sprintf(`{"n":%d,"pad":%q}`, i, strings.Repeat("x", i%200))
				if i%3 == 0 {
					m, k = "orders", fmt.Sprintf("order:{%d}:%d", i%17, i)
				}
				if i%250 == 0 {
					v = strings.Repeat(strconv.Itoa(i), 40_000) // a few large values
				}
				if _, err := sc.Map(m).Put(ctx, []byte(k), []byte(v)); err != nil {
					t.Errorf("put %s/%s: %v", m, k, err)
					return
				}
				mu.Lock()
				want[m][k] = v
				mu.Unlock()
			}
		}()
	}
	wg.Wait()
	if t.Failed() {
		t.FailNow()
	}
	// Deleted keys must not come back.
	for i := 0; i < 1200; i += 7 {
		k := fmt.Sprintf("user-%04d", i)
		if _, ok := want["users"][k]; ok {
			if _, err := sc.Map("users").Delete(ctx, []byte(k)); err != nil {
				t.Fatal(err)
			}
			delete(want["users"], k)
		}
	}

	dir := t.TempDir()
	file := filepath.Join(dir, "grid.zgb")
	out := runCLI(t, ctx, "backup", "--out", file, "--addr", strings.Join(src.Addrs(), ","))
	t.Logf("backup: %s", out)
	good, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	man := backupManifest(t, good)
	if man.Cluster.Partitions != 8 || len(man.Parts) != 8 || int(man.Entries) != len(want["users"])+len(want["orders"]) {
		t.Fatalf("manifest: %d partitions, %d parts, %d entries; want 8, 8, %d", man.Cluster.Partitions, len(man.Parts), man.Entries, len(want["users"])+len(want["orders"]))
	}
	for _, p := range man.Parts {
		if p.AppliedIndex == 0 || p.Leader == "" {
			t.Fatalf("part %d: applied index %d, leader %q", p.Partition, p.AppliedIndex, p.Leader)
		}
	}

	dst, dc := startClusterConfig(t, localcluster.Config{Nodes: 3, Partitions: 5, Replicas: 3})
	for _, bad := range damagedBackups(t, good) {
		_, err := dc.Restore(ctx, bytes.NewReader(bad.data), nil)
		if !errors.Is(err, client.ErrBadBackup) {
			t.Fatalf("%s: restore returned %v, want ErrBadBackup", bad.name, err)
		}
		t.Logf("%s: refused: %v", bad.name, err)
		if maps, err := dc.ListMaps(ctx); err != nil || len(maps) != 0 {
			t.Fatalf("%s: after the refused restore the target has maps %v (%v)", bad.name, maps, err)
		}
	}
	// The CLI says so too.
	trunc := filepath.Join(dir, "truncated.zgb")
	if err := os.WriteFile(trunc, good[:len(good)/2], 0o644); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, binary, "restore", trunc, "--quiet", "--addr", strings.Join(dst.Addrs(), ","))
	if b, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(b), "damaged") {
		t.Fatalf("CLI restore of a truncated file: err %v, output %s", err, b)
	}

	out = runCLI(t, ctx, "restore", file, "--addr", strings.Join(dst.Addrs(), ","))
	t.Logf("restore: %s", out)
	maps, err := dc.ListMaps(ctx)
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(maps)
	if fmt.Sprint(maps) != "[empty orders users]" {
		t.Fatalf("target maps %v", maps)
	}
	for m, kv := range want {
		got := scanAll(ctx, t, dc.Map(m))
		if len(got) != len(kv) {
			t.Fatalf("map %s: %d keys restored, source has %d", m, len(got), len(kv))
		}
		for k, v := range kv {
			if got[k] != v {
				t.Fatalf("map %s key %s: restored %.40q, source %.40q", m, k, got[k], v)
			}
		}
	}
	t.Logf("restored %d maps, %d entries from 8 partitions into 5, all equal", len(want), man.Entries)

	if _, err := dc.Restore(ctx, bytes.NewReader(good), nil); !errors.Is(err, client.ErrRestoreTargetNotEmpty) {
		t.Fatalf("second restore: %v, want ErrRestoreTargetNotEmpty", err)
	}
}

// TestBackupWhileWriting takes a backup while transactions and sequential
// writes go on, and checks that every partition was read at one point of
// its history: both keys a transaction writes are in the backup with the
// same value, and a sequence of acknowledged writes to one partition has no
// holes.
func TestBackupWhileWriting(t *testing.T) {
	_, c := startCluster(t, 4, "pairs", "seq")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	pairs, seq := c.Map("pairs"), c.Map("seq")

	stop := make(chan struct{})
	var wg sync.WaitGroup
	var txns, seqAcked int
	var unsure sync.Map // seq keys whose write failed: they may be missing
	for w := 0; w < 4; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				tag := fmt.Sprintf("{t%d}", (w*7+i)%16)
				v := []byte(fmt.Sprintf("w%d-%d", w, i))
				ok, _, err := pairs.Txn(ctx).Then(client.OpPut([]byte(tag+"a"), v), client.OpPut([]byte(tag+"b"), v)).Commit()
				if err == nil && ok && w == 0 {
					txns++
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			k := fmt.Sprintf("{s}%06d", i)
			if _, err := seq.Put(ctx, []byte(k), []byte(k)); err != nil {
				unsure.Store(k, true)
				continue
			}
			seqAcked++
		}
	}()
	time.Sleep(1500 * time.Millisecond) // let the writes get going before and during the backup

	var buf bytes.Buffer
	man, err := c.Backup(ctx, &buf, nil)
	close(stop)
	wg.Wait()
	if err != nil {
		t.Fatal(err)
	}
	entries := backupEntries(t, buf.Bytes())

	// Pairs written by one transaction are in the backup together.
	byKey := map[string]string{}
	for _, e := range entries["pairs"] {
		byKey[string(e.Key)] = string(e.Value)
	}
	checked := 0
	for tag := 0; tag < 16; tag++ {
		a, aok := byKey[fmt.Sprintf("{t%d}a", tag)]
		b, bok := byKey[fmt.Sprintf("{t%d}b", tag)]
		if aok != bok || a != b {
			t.Fatalf("tag %d: backup holds a=%q (%v) and b=%q (%v), written together", tag, a, aok, b, bok)
		}
		if aok {
			checked++
		}
	}
	// Sequential acknowledged writes to one partition leave no hole.
	present := map[int]bool{}
	top := -1
	for _, e := range entries["seq"] {
		i, err := strconv.Atoi(strings.TrimPrefix(string(e.Key), "{s}"))
		if err != nil {
			t.Fatalf("seq key %q", e.Key)
		}
		present[i] = true
		top = max(top, i)
	}
	for i := 0; i < top; i++ {
		if _, maybe := unsure.Load(fmt.Sprintf("{s}%06d", i)); !present[i] && !maybe {
			t.Fatalf("seq write %d is missing from the backup, which holds write %d", i, top)
		}
	}
	if checked == 0 || top < 10 {
		t.Fatalf("the workload did not run: %d pairs, seq up to %d", checked, top)
	}
	t.Logf("backup during writes: %d entries, %d pairs consistent, seq 0..%d without holes (%d txns, %d seq writes acknowledged in all)",
		man.Entries, checked, top, txns, seqAcked)
}

// runCLI runs the zerogrid binary and returns its standard output.
func runCLI(t *testing.T, ctx context.Context, args ...string) string {
	t.Helper()
	cmd := exec.CommandContext(ctx, binary, args...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("zerogrid %s: %v\n%s", strings.Join(args, " "), err, stderr.String())
	}
	return strings.TrimSpace(stdout.String())
}

func scanAll(ctx context.Context, t *testing.T, m *client.Map) map[string]string {
	t.Helper()
	got := map[string]string{}
	if err := m.Scan(ctx, nil, func(e client.Entry) error {
		got[string(e.Key)] = string(e.Value)
		return nil
	}); err != nil {
		t.Fatal(err)
	}
	return got
}

type tarFile struct {
	hdr  *tar.Header
	data []byte
}

func untar(t *testing.T, b []byte) []tarFile {
	t.Helper()
	var out []tarFile
	tr := tar.NewReader(bytes.NewReader(b))
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarFile{hdr, data})
	}
}

func retar(t *testing.T, files []tarFile) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := *f.hdr
		h.Size = int64(len(f.data))
		if err := tw.WriteHeader(&h); err != nil {
			t.Fatal(err)
		}
		if _, err := tw.Write(f.data); err != nil {
			t.Fatal(err)
		}
	}
	if err := tw.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func backupManifest(t *testing.T, b []byte) client.BackupManifest {
	t.Helper()
	for _, f := range untar(t, b) {
		if f.hdr.Name == "manifest.json" {
			var m client.BackupManifest
			if err := json.Unmarshal(f.data, &m); err != nil {
				t.Fatal(err)
			}
			return m
		}
	}
	t.Fatal("no manifest in the backup")
	return client.BackupManifest{}
}

// backupEntries decodes every part of a backup, by map.
func backupEntries(t *testing.T, b []byte) map[string][]*gridpb.BackupEntry {
	t.Helper()
	out := map[string][]*gridpb.BackupEntry{}
	for _, f := range untar(t, b) {
		if !strings.HasPrefix(f.hdr.Name, "parts/") {
			continue
		}
		br := bufio.NewReader(bytes.NewReader(f.data))
		for {
			e := &gridpb.BackupEntry{}
			if err := protodelim.UnmarshalFrom(br, e); err == io.EOF {
				break
			} else if err != nil {
				t.Fatalf("%s: %v", f.hdr.Name, err)
			}
			out[e.Map] = append(out[e.Map], e)
		}
	}
	return out
}

type damaged struct {
	name string
	data []byte
}

// damagedBackups makes broken copies of a good backup file.
func damagedBackups(t *testing.T, good []byte) []damaged {
	t.Helper()
	files := untar(t, good)
	var out []damaged
	// Truncations: inside the first part, half way, right before the
	// manifest (a clean tar boundary) and inside the manifest checksum.
	manifestAt := bytes.Index(good, []byte("{\n  \"format\"")) - 512
	for _, n := range []int{700, len(good) / 2, manifestAt, len(good) - 1024 - 512 + 20} {
		out = append(out, damaged{fmt.Sprintf("truncated at %d of %d bytes", n, len(good)), good[:n]})
	}
	// One byte flipped in the middle of the largest part.
	off, size := 0, int64(0)
	pos := 0
	for _, f := range files {
		pos += 512 // header
		if strings.HasPrefix(f.hdr.Name, "parts/") && f.hdr.Size > size {
			off, size = pos, f.hdr.Size
		}
		pos += int(f.hdr.Size+511) / 512 * 512
	}
	flipped := append([]byte(nil), good...)
	flipped[off+int(size)/2] ^= 0x01
	out = append(out, damaged{"one bit flipped in a part", flipped})
	// The manifest altered (a valid JSON digit changed).
	altered := append([]byte(nil), good...)
	i := bytes.Index(altered, []byte(`"applied_index": `)) + len(`"applied_index": `)
	altered[i] = '1' + (altered[i]-'0')%8
	out = append(out, damaged{"manifest altered", altered})
	// The manifest altered and its checksum made to match: the parts no
	// longer do.
	var forged []tarFile
	for _, f := range files {
		f := f
		switch f.hdr.Name {
		case "manifest.json":
			var m client.BackupManifest
			if err := json.Unmarshal(f.data, &m); err != nil {
				t.Fatal(err)
			}
			m.Parts[0].SHA256 = strings.Repeat("0", 64)
			f.data, _ = json.Marshal(m)
		case "manifest.sha256":
			sum := sha256.Sum256(forged[len(forged)-1].data)
			f.data = []byte(hex.EncodeToString(sum[:]) + "\n")
		}
		forged = append(forged, f)
	}
	out = append(out, damaged{"manifest and its checksum altered", retar(t, forged)})
	// A part missing.
	out = append(out, damaged{"a part missing", retar(t, append(append([]tarFile(nil), files[:1]...), files[2:]...))})
	return out
}
