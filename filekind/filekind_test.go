package filekind

import (
	"net"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

func TestOfAndReason(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "file")
	os.WriteFile(file, nil, 0o600)
	fifo := filepath.Join(dir, "fifo")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "sock")
	l, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	for _, tc := range []struct{ path, want string }{
		{file, "a regular file"}, {dir, "a directory"}, {fifo, "a named pipe (FIFO)"}, {sock, "a socket"}, {"/dev/null", "a character device"},
	} {
		fi, err := os.Stat(tc.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := Of(fi.Mode()); got != tc.want {
			t.Errorf("Of(%s) = %q, want %q", tc.path, got, tc.want)
		}
	}
	_, err = os.Stat(filepath.Join(dir, "missing"))
	if got := Reason(err); got != "no such file" {
		t.Errorf("Reason(missing) = %q", got)
	}
	_, err = os.Stat(filepath.Join(file, "sub"))
	if got := Reason(err); got != "not a directory" {
		t.Errorf("Reason(file/sub) = %q", got)
	}
}
