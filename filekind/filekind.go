// Package filekind words what a path is and why a file operation failed, for the
// one-line messages cookbook gives operators ("is a named pipe (FIFO), expected a regular
// file"; "no such file").
package filekind

import (
	"errors"
	"fmt"
	"io/fs"
	"syscall"
)

// Of names the kind of file of mode m with its article: "a regular file", "a directory",
// "a named pipe (FIFO)", "a socket", "a character device", "a block device".
func Of(m fs.FileMode) string {
	switch {
	case m.IsRegular():
		return "a regular file"
	case m.IsDir():
		return "a directory"
	case m&fs.ModeNamedPipe != 0:
		return "a named pipe (FIFO)"
	case m&fs.ModeSocket != 0:
		return "a socket"
	case m&fs.ModeCharDevice != 0:
		return "a character device"
	case m&fs.ModeDevice != 0:
		return "a block device"
	}
	return fmt.Sprintf("not a regular file (mode %s)", m)
}

// Reason returns why a file operation failed without the operation and path os puts
// around it: "no such file", "permission denied", "not a directory".
func Reason(err error) string {
	if errors.Is(err, fs.ErrNotExist) {
		return "no such file"
	}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		return errno.Error()
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}
