package replication

import (
	"os"
	"syscall"
)

// fdatasync flushes f's data (and the size, if it grew) to the disk.
func fdatasync(f *os.File) error { return syscall.Fdatasync(int(f.Fd())) }

// freeBytes is the space left for unprivileged writers on dir's file system.
func freeBytes(dir string) (int64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(dir, &st); err != nil {
		return 0, err
	}
	return int64(st.Bavail) * int64(st.Bsize), nil
}
