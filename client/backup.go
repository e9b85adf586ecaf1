package client

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
	"sort"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protodelim"

	"github.com/zerogrid/zerogrid/grid"
	"github.com/zerogrid/zerogrid/grid/gridpb"
)

// BackupFormat names the format of the files Backup writes.
//
// A backup is a tar stream: one entry per partition of the source cluster,
// parts/00000, parts/00001, ... in order, each a sequence of
// varint-length-delimited gridpb.BackupEntry messages (map, key, value, the
// value's CRC32C, expiry); then manifest.json (BackupManifest: the cluster,
// the maps, per part its applied index, entry count, size and SHA-256, and
// the SHA-256 of all parts together); then manifest.sha256, the hex SHA-256
// of manifest.json. Restore checks all of it before it writes anything.
const BackupFormat = "zerogrid-backup/1"

const (
	backupManifestName    = "manifest.json"
	backupManifestSumName = "manifest.sha256"
	backupMaxManifest     = 64 << 20
	// restoreBatchBudget is the budget of one restore batch (one Raft
	// entry) in grid.RestoreEntryCost units; an entry above it goes alone.
	restoreBatchBudget = 256 << 10
)

func backupPartName(p int) string { return fmt.Sprintf("parts/%05d", p) }

// BackupManifest describes a backup; it is the file's manifest.json.
type BackupManifest struct {
	Format  string        `json:"format"`
	Created time.Time     `json:"created"`
	Cluster BackupCluster `json:"cluster"`
	// Maps are every map of the source cluster (some may be empty).
	Maps  []string     `json:"maps"`
	Parts []BackupPart `json:"parts"`
	// Entries and Bytes total the parts; SHA256 is the hex SHA-256 of the
	// parts' bytes, concatenated in order.
	Entries int64  `json:"entries"`
	Bytes   int64  `json:"bytes"`
	SHA256  string `json:"sha256"`
}

// BackupCluster is what a backup records of its source cluster.
type BackupCluster struct {
	Partitions int      `json:"partitions"`
	Replicas   int      `json:"replicas"`
	TableEpoch uint64   `json:"table_epoch"`
	Nodes      []string `json:"nodes"`
}

// BackupPart is one source partition in a backup: its entries, read from
// one view on its leader, are exactly its state at AppliedIndex.
type BackupPart struct {
	Partition    int    `json:"partition"`
	File         string `json:"file"`
	AppliedIndex uint64 `json:"applied_index"`
	Leader       string `json:"leader"`
	Entries      int64  `json:"entries"`
	Bytes        int64  `json:"bytes"`
	SHA256       string `json:"sha256"`
}

// BackupProgress is reported while Backup runs.
type BackupProgress struct {
	Partitions     int   // partitions in the cluster
	PartitionsDone int   // partitions written to the backup
	Entries        int64 // entries read so far
	Bytes          int64 // bytes of entries read so far
}

// Backup writes a consistent, checksummed backup of every map of the cluster
// to w (format: BackupFormat). Each partition is read from one view on its
// leader, so the backup holds each partition as of one applied index; writes
// that go on meanwhile land in a partition's backup or not, whole. A part is
// spooled to a temporary file (os.TempDir) before it goes into the stream,
// so that a partition whose read fails half way is read again from the
// start. progress, if not nil, is called as entries arrive.
func (c *Client) Backup(ctx context.Context, w io.Writer, progress func(BackupProgress)) (*BackupManifest, error) {
	if progress == nil {
		progress = func(BackupProgress) {}
	}
	t, err := c.fetchTable(ctx)
	if err != nil {
		return nil, fmt.Errorf("client: backup: %w", err)
	}
	maps, err := c.ListMaps(ctx)
	if err != nil {
		return nil, fmt.Errorf("client: backup: %w", err)
	}
	spool, err := os.CreateTemp("", "zerogrid-backup-part-*")
	if err != nil {
		return nil, fmt.Errorf("client: backup: spool file: %w", err)
	}
	defer func() {
		spool.Close()
		os.Remove(spool.Name())
	}()

	man := &BackupManifest{
		Format: BackupFormat, Created: time.Now().UTC().Truncate(time.Second),
		Cluster: BackupCluster{Partitions: t.NumPartitions(), Replicas: t.Replicas, TableEpoch: t.Epoch},
	}
	for _, n := range t.Nodes {
		man.Cluster.Nodes = append(man.Cluster.Nodes, n.ID)
	}
	seen := map[string]bool{}
	for _, m := range maps {
		seen[m] = true
	}
	whole := sha256.New()
	tw := tar.NewWriter(w)
	prog := BackupProgress{Partitions: t.NumPartitions()}
	for p := 0; p < t.NumPartitions(); p++ {
		part, err := c.backupPartition(ctx, p, spool, seen, &prog, progress)
		if err != nil {
			return nil, fmt.Errorf("client: backup of partition %d: %w", p, err)
		}
		if _, err := spool.Seek(0, io.SeekStart); err != nil {
			return nil, fmt.Errorf("client: backup: %w", err)
		}
		hdr := &tar.Header{Name: part.File, Typeflag: tar.TypeReg, Mode: 0o644, Size: part.Bytes, ModTime: man.Created}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("client: backup: write: %w", err)
		}
		if n, err := io.Copy(tw, io.TeeReader(io.LimitReader(spool, part.Bytes), whole)); err != nil || n != part.Bytes {
			return nil, fmt.Errorf("client: backup: copy part %d (%d of %d bytes): %w", p, n, part.Bytes, err)
		}
		man.Parts = append(man.Parts, part)
		man.Entries += part.Entries
		man.Bytes += part.Bytes
		prog.PartitionsDone++
		progress(prog)
	}
	for m := range seen {
		man.Maps = append(man.Maps, m)
	}
	sort.Strings(man.Maps)
	man.SHA256 = hex.EncodeToString(whole.Sum(nil))
	mj, err := json.MarshalIndent(man, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("client: backup: manifest: %w", err)
	}
	sum := sha256.Sum256(mj)
	for _, f := range []struct {
		name string
		data []byte
	}{{backupManifestName, mj}, {backupManifestSumName, []byte(hex.EncodeToString(sum[:]) + "\n")}} {
		hdr := &tar.Header{Name: f.name, Typeflag: tar.TypeReg, Mode: 0o644, Size: int64(len(f.data)), ModTime: man.Created}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, fmt.Errorf("client: backup: write: %w", err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("client: backup: write: %w", err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("client: backup: write: %w", err)
	}
	return man, nil
}

// backupPartition reads partition p from its leader into spool (emptied
// first, and again if an attempt fails half way) and describes the part.
func (c *Client) backupPartition(ctx context.Context, p int, spool *os.File, maps map[string]bool, prog *BackupProgress, progress func(BackupProgress)) (BackupPart, error) {
	var part BackupPart
	base := *prog
	err := c.run(ctx, "backup", c.newPicker(p, true).stream(), false, func(ctx context.Context, cc *grpc.ClientConn, t target, opts ...grpc.CallOption) error {
		// The stream ends at its trailer or on the first bad entry,
		// without reading to EOF: cancelling releases it.
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		*prog = base
		part = BackupPart{Partition: p, File: backupPartName(p)}
		if err := spool.Truncate(0); err != nil {
			return err
		}
		if _, err := spool.Seek(0, io.SeekStart); err != nil {
			return err
		}
		sum := sha256.New()
		bw := bufio.NewWriterSize(io.MultiWriter(spool, sum), 64<<10)
		stream, err := gridpb.NewBackupClient(cc).ReadPartition(ctx, &gridpb.ReadPartitionRequest{Partition: uint32(p)}, opts...)
		if err != nil {
			return err
		}
		for {
			r, err := stream.Recv()
			if err == io.EOF {
				return fmt.Errorf("%w: %s ended the stream of partition %d without its trailer", grid.ErrBadRequest, t.addr, p)
			}
			if err != nil {
				return err
			}
			for _, e := range r.GetEntries() {
				if err := verifyValue(e.GetMap(), e.GetKey(), e.GetValue(), e.GetCrc(), t.addr); err != nil {
					return err
				}
				n, err := protodelim.MarshalTo(bw, e)
				if err != nil {
					return fmt.Errorf("spool: %w", err)
				}
				part.Entries++
				part.Bytes += int64(n)
				prog.Entries++
				prog.Bytes += int64(n)
				maps[e.GetMap()] = true
			}
			progress(*prog)
			if !r.GetDone() {
				continue
			}
			if r.GetCount() != uint64(part.Entries) {
				return fmt.Errorf("%w: %s sent %d entries of partition %d, its trailer says %d", grid.ErrBadRequest, t.addr, part.Entries, p, r.GetCount())
			}
			if err := bw.Flush(); err != nil {
				return fmt.Errorf("spool: %w", err)
			}
			part.AppliedIndex, part.Leader = r.GetAppliedIndex(), r.GetServedBy()
			part.SHA256 = hex.EncodeToString(sum.Sum(nil))
			return nil
		}
	})
	return part, err
}

// RestoreProgress is reported while Restore runs: first the whole file is
// verified (Phase "verify", by bytes), then entries are written ("write").
type RestoreProgress struct {
	Phase        string
	Bytes        int64
	TotalBytes   int64
	Entries      int64
	TotalEntries int64
}

// Restore loads a backup written by Backup into this cluster, which must not
// hold data in any of the backup's maps (ErrRestoreTargetNotEmpty); the
// partition counts may differ, since keys are hashed again. The whole file
// is verified first — structure, every part's SHA-256, the manifest's and
// the whole's, every value's CRC32C and the cluster's key and value limits —
// and a damaged file is refused with ErrBadBackup before anything is
// written. Then the maps are created and entries are written through Raft in
// bounded batches, each applied at most once. r is read twice: if it is not
// an io.ReadSeeker it is first copied to a temporary file.
//
// A restore that fails while writing (the cluster lost its quorum, say)
// leaves the maps partly restored: start again on an empty cluster.
func (c *Client) Restore(ctx context.Context, r io.Reader, progress func(RestoreProgress)) (*BackupManifest, error) {
	if progress == nil {
		progress = func(RestoreProgress) {}
	}
	rs, cleanup, err := seekable(r)
	if err != nil {
		return nil, fmt.Errorf("client: restore: %w", err)
	}
	defer cleanup()
	start, err := rs.Seek(0, io.SeekCurrent)
	if err != nil {
		return nil, fmt.Errorf("client: restore: %w", err)
	}
	end, err := rs.Seek(0, io.SeekEnd)
	if err != nil {
		return nil, fmt.Errorf("client: restore: %w", err)
	}
	prog := RestoreProgress{Phase: "verify", TotalBytes: end - start}
	rewind := func() error {
		_, err := rs.Seek(start, io.SeekStart)
		return err
	}
	if err := rewind(); err != nil {
		return nil, fmt.Errorf("client: restore: %w", err)
	}
	man, err := readBackup(rs, c.opts.limits, nil, func(n int64) {
		prog.Bytes = n
		progress(prog)
	})
	if err != nil {
		return nil, err // ErrBadBackup says what and where
	}

	if err := c.checkRestoreTarget(ctx, man.Maps); err != nil {
		return nil, err
	}
	for _, m := range man.Maps {
		if err := c.CreateMap(ctx, m); err != nil && !errors.Is(err, grid.ErrMapExists) {
			return nil, fmt.Errorf("client: restore: %w", err)
		}
	}

	if err := rewind(); err != nil {
		return nil, fmt.Errorf("client: restore: %w", err)
	}
	prog = RestoreProgress{Phase: "write", TotalBytes: prog.TotalBytes, TotalEntries: man.Entries}
	w := &restoreWriter{c: c, parts: c.numPartitions(), batches: map[int]*restoreBatch{}, budget: min(restoreBatchBudget, c.opts.limits.MaxRestoreBatch())}
	w.written = func(n int) {
		prog.Entries += int64(n)
		progress(prog)
	}
	_, err = readBackup(rs, c.opts.limits, func(e *gridpb.BackupEntry) error { return w.add(ctx, e) }, func(n int64) { prog.Bytes = n })
	if err == nil {
		err = w.flushAll(ctx)
	}
	if err != nil {
		return nil, fmt.Errorf("client: restore: writing (the target now holds part of the backup; restore again into an empty cluster): %w", err)
	}
	return man, nil
}

// seekable returns r as an io.ReadSeeker, spooling it to a temporary file if
// it is not one.
func seekable(r io.Reader) (io.ReadSeeker, func(), error) {
	if rs, ok := r.(io.ReadSeeker); ok {
		if _, err := rs.Seek(0, io.SeekCurrent); err == nil { // a pipe is an *os.File that cannot seek
			return rs, func() {}, nil
		}
	}
	f, err := os.CreateTemp("", "zerogrid-restore-*")
	if err != nil {
		return nil, nil, fmt.Errorf("spool file: %w", err)
	}
	cleanup := func() {
		f.Close()
		os.Remove(f.Name())
	}
	if _, err := io.Copy(f, r); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("spool the backup: %w", err)
	}
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		cleanup()
		return nil, nil, err
	}
	return f, cleanup, nil
}

// errStopScan ends a scan after its first entry.
var errStopScan = errors.New("client: stop scan")

// checkRestoreTarget refuses a restore into maps that hold data.
func (c *Client) checkRestoreTarget(ctx context.Context, maps []string) error {
	existing, err := c.ListMaps(ctx)
	if err != nil {
		return fmt.Errorf("client: restore: %w", err)
	}
	have := map[string]bool{}
	for _, m := range existing {
		have[m] = true
	}
	for _, m := range maps {
		if !have[m] {
			continue
		}
		err := c.Map(m).Scan(ctx, nil, func(Entry) error { return errStopScan })
		if errors.Is(err, errStopScan) {
			return fmt.Errorf("%w: map %q already holds data; restore into a new cluster", ErrRestoreTargetNotEmpty, m)
		}
		if err != nil {
			return fmt.Errorf("client: restore: check map %q is empty: %w", m, err)
		}
	}
	return nil
}

type restoreBatch struct {
	entries []*gridpb.BackupEntry
	cost    int
}

// restoreWriter groups entries by the target partition and writes each
// group through Raft when its budget is used up.
type restoreWriter struct {
	c       *Client
	parts   int
	budget  int
	batches map[int]*restoreBatch
	written func(n int)
}

func (w *restoreWriter) add(ctx context.Context, e *gridpb.BackupEntry) error {
	p := grid.PartitionOf(e.Map, e.Key, w.parts)
	b := w.batches[p]
	if b == nil {
		b = &restoreBatch{}
		w.batches[p] = b
	}
	cost := grid.RestoreEntryCost(e.Map, e.Key, e.Value, e.Expiry)
	if len(b.entries) > 0 && b.cost+cost > w.budget {
		if err := w.flush(ctx, p, b); err != nil {
			return err
		}
	}
	b.entries = append(b.entries, e)
	b.cost += cost
	return nil
}

func (w *restoreWriter) flushAll(ctx context.Context) error {
	parts := make([]int, 0, len(w.batches))
	for p := range w.batches {
		parts = append(parts, p)
	}
	sort.Ints(parts)
	for _, p := range parts {
		if b := w.batches[p]; len(b.entries) > 0 {
			if err := w.flush(ctx, p, b); err != nil {
				return err
			}
		}
	}
	return nil
}

func (w *restoreWriter) flush(ctx context.Context, p int, b *restoreBatch) error {
	c := w.c
	req := &gridpb.RestoreRequest{ClientId: c.clientID, Seq: c.seq.Add(1), Partition: uint32(p), Entries: b.entries}
	err := c.run(ctx, "restore", c.newPicker(p, true), true, func(ctx context.Context, cc *grpc.ClientConn, _ target, opts ...grpc.CallOption) error {
		_, err := gridpb.NewBackupClient(cc).Restore(ctx, req, opts...)
		return err
	})
	if err != nil {
		return fmt.Errorf("partition %d: %w", p, err)
	}
	w.written(len(b.entries))
	b.entries, b.cost = nil, 0
	return nil
}

// readBackup reads a backup stream and verifies everything in it, calling
// each (if not nil) for every entry after the entry's own checks. progress
// gets the bytes read so far. Damage is reported as ErrBadBackup; an error
// from each is returned as it is.
func readBackup(r io.Reader, limits grid.Limits, each func(*gridpb.BackupEntry) error, progress func(int64)) (*BackupManifest, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrBadBackup, fmt.Sprintf(format, args...))
	}
	cr := &countingReader{r: r, progress: progress}
	tr := tar.NewReader(cr)
	whole := sha256.New()
	var (
		parts     []BackupPart
		entryMaps = map[string]bool{}
		manifest  []byte
		manSum    string
	)
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, bad("reading the archive after %d bytes: %v", cr.n, err)
		}
		if hdr.Typeflag != tar.TypeReg {
			return nil, bad("entry %q is not a regular file", hdr.Name)
		}
		switch {
		case manSum != "":
			return nil, bad("entry %q after the manifest checksum", hdr.Name)
		case hdr.Name == backupManifestName:
			if manifest != nil {
				return nil, bad("two manifests")
			}
			if hdr.Size > backupMaxManifest {
				return nil, bad("manifest of %d bytes", hdr.Size)
			}
			if manifest, err = io.ReadAll(tr); err != nil {
				return nil, bad("reading the manifest: %v", err)
			}
		case hdr.Name == backupManifestSumName:
			if manifest == nil {
				return nil, bad("manifest checksum before the manifest")
			}
			b, err := io.ReadAll(io.LimitReader(tr, 256))
			if err != nil {
				return nil, bad("reading the manifest checksum: %v", err)
			}
			if manSum = string(bytes.TrimSpace(b)); manSum == "" {
				return nil, bad("empty manifest checksum")
			}
		case manifest != nil:
			return nil, bad("entry %q after the manifest", hdr.Name)
		case hdr.Name == backupPartName(len(parts)):
			part, err := readBackupPart(tr, len(parts), hdr.Size, limits, whole, entryMaps, each)
			if err != nil {
				return nil, err
			}
			parts = append(parts, part)
		default:
			return nil, bad("unexpected entry %q (expected %s)", hdr.Name, backupPartName(len(parts)))
		}
	}
	switch {
	case manifest == nil:
		return nil, bad("no manifest: the file is truncated or not a zerogrid backup")
	case manSum == "":
		return nil, bad("no manifest checksum: the file is truncated")
	}
	if got := sha256.Sum256(manifest); hex.EncodeToString(got[:]) != manSum {
		return nil, bad("the manifest fails its SHA-256 (altered?)")
	}
	var man BackupManifest
	if err := json.Unmarshal(manifest, &man); err != nil {
		return nil, bad("manifest: %v", err)
	}
	if man.Format != BackupFormat {
		return nil, bad("format %q, this client reads %q", man.Format, BackupFormat)
	}
	if len(man.Parts) != len(parts) || man.Cluster.Partitions != len(parts) {
		return nil, bad("the file has %d parts, the manifest lists %d of %d partitions", len(parts), len(man.Parts), man.Cluster.Partitions)
	}
	var entries, size int64
	for i, got := range parts {
		want := man.Parts[i]
		if want.Partition != got.Partition || want.File != got.File || want.Entries != got.Entries || want.Bytes != got.Bytes {
			return nil, bad("part %d: file has %s with %d entries in %d bytes, manifest says partition %d %s with %d entries in %d bytes",
				i, got.File, got.Entries, got.Bytes, want.Partition, want.File, want.Entries, want.Bytes)
		}
		if want.SHA256 != got.SHA256 {
			return nil, bad("part %d fails its SHA-256", i)
		}
		entries += got.Entries
		size += got.Bytes
	}
	if man.Entries != entries || man.Bytes != size {
		return nil, bad("the manifest counts %d entries in %d bytes, the parts hold %d in %d", man.Entries, man.Bytes, entries, size)
	}
	if hex.EncodeToString(whole.Sum(nil)) != man.SHA256 {
		return nil, bad("the backup fails its whole SHA-256")
	}
	listed := map[string]bool{}
	for _, m := range man.Maps {
		if err := grid.ValidateMapName(m); err != nil {
			return nil, bad("manifest: %v", err)
		}
		if listed[m] {
			return nil, bad("manifest lists map %q twice", m)
		}
		listed[m] = true
	}
	for m := range entryMaps {
		if !listed[m] {
			return nil, bad("entries of map %q, which the manifest does not list", m)
		}
	}
	return &man, nil
}

// readBackupPart reads and checks one part.
func readBackupPart(tr io.Reader, p int, size int64, limits grid.Limits, whole io.Writer, maps map[string]bool, each func(*gridpb.BackupEntry) error) (BackupPart, error) {
	part := BackupPart{Partition: p, File: backupPartName(p), Bytes: size}
	sum := sha256.New()
	cr := &countingReader{r: io.TeeReader(tr, io.MultiWriter(sum, whole))}
	br := bufio.NewReaderSize(cr, 64<<10)
	opts := protodelim.UnmarshalOptions{MaxSize: int64(limits.MaxRestoreBatch())}
	for {
		e := &gridpb.BackupEntry{}
		err := opts.UnmarshalFrom(br, e)
		if err == io.EOF {
			break
		}
		if err != nil {
			return part, fmt.Errorf("%w: part %d, entry %d: %v", ErrBadBackup, p, part.Entries, err)
		}
		if err := grid.ValidateMapName(e.Map); err != nil {
			return part, fmt.Errorf("%w: part %d, entry %d: %w", ErrBadBackup, p, part.Entries, err)
		}
		if err := limits.CheckKey(e.Key); err != nil {
			return part, fmt.Errorf("%w: part %d, entry %d (map %q): %w", ErrBadBackup, p, part.Entries, e.Map, err)
		}
		if err := limits.CheckValue(e.Value); err != nil {
			return part, fmt.Errorf("%w: part %d, map %q key %q: %w", ErrBadBackup, p, e.Map, e.Key, err)
		}
		if checksum(e.Value) != e.Crc {
			return part, fmt.Errorf("%w: part %d, map %q key %q: the value fails its CRC32C", ErrBadBackup, p, e.Map, e.Key)
		}
		maps[e.Map] = true
		part.Entries++
		if each != nil {
			if err := each(e); err != nil {
				return part, err
			}
		}
	}
	if cr.n != size {
		return part, fmt.Errorf("%w: part %d: read %d bytes, its header says %d", ErrBadBackup, p, cr.n, size)
	}
	part.SHA256 = hex.EncodeToString(sum.Sum(nil))
	return part, nil
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r        io.Reader
	n        int64
	progress func(int64)
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if c.progress != nil && n > 0 {
		c.progress(c.n)
	}
	return n, err
}
