// Package atomicfile writes files that a crash (kill -9, power loss) leaves either with
// their old content or with the new one, never a mix: the data goes to a temporary file in
// the same directory, which is synced, renamed over the file, and the directory synced.
// The run records of cookbooks/state and the host keys ssh learns use it.
package atomicfile

import (
	"os"
	"path/filepath"
)

// WriteFile writes data to path atomically, with permissions perm: path holds either its
// old content or data, and no temporary file is left behind on failure.
func WriteFile(path string, data []byte, perm os.FileMode) (err error) {
	dir := filepath.Dir(path)
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp-*")
	if err != nil {
		return err
	}
	defer func() {
		if err != nil {
			_ = os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(perm); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return err
	}
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}
