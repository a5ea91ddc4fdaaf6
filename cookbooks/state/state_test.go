package state

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

// writeRun writes content as the file of run id in a new store, with the given mode.
func writeRun(t *testing.T, id, content string, mode os.FileMode) (*Store, string) {
	t.Helper()
	s := &Store{Dir: t.TempDir()}
	if err := os.MkdirAll(s.runsDir(), 0o700); err != nil {
		t.Fatal(err)
	}
	path := s.Path(id)
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(path, mode); err != nil { // WriteFile's mode is filtered by the umask
		t.Fatal(err)
	}
	return s, path
}

const goodRun = `{"schema": 1, "id": "ID", "cookbook": "toy", "status": "failed", "startedAt": "2024-05-01T10:00:00Z", "holder": {}, "steps": []}`

func TestLoadRefuses(t *testing.T) {
	const id = "20240501-100000-abcdef"
	good := strings.Replace(goodRun, `"ID"`, `"`+id+`"`, 1)
	for _, tc := range []struct {
		name    string
		content string
		mode    os.FileMode
		want    string // the error, with {path} for the file's path; "" for none
	}{
		{name: "good", content: good, mode: 0o600},
		{name: "owner read only", content: good, mode: 0o400},
		{name: "mode 0644", content: good, mode: 0o644,
			want: "run file {path} has mode 0644 (readable by others; it may hold host details): run chmod 600 {path}"},
		{name: "mode 0640", content: good, mode: 0o640,
			want: "run file {path} has mode 0640 (readable by others; it may hold host details): run chmod 600 {path}"},
		{name: "mode 0620", content: good, mode: 0o620,
			want: "run file {path} has mode 0620 (writable by others; it may hold host details): run chmod 600 {path}"},
		{name: "mode 0644 corrupt", content: good[:20], mode: 0o644,
			want: "run file {path} has mode 0644 (readable by others; it may hold host details): run chmod 600 {path}"},
		{name: "id mismatch", content: strings.Replace(good, id, "20240501-100000-000000", 1), mode: 0o600,
			want: `run file {path}: records id "20240501-100000-000000", expected "` + id + `"`},
		{name: "hollow", content: `{"schema":1}`, mode: 0o600,
			want: `run file {path}: missing "id", "cookbook", "status", "startedAt"`},
		{name: "no cookbook", content: strings.Replace(good, `"toy"`, `""`, 1), mode: 0o600,
			want: `run file {path}: missing "cookbook"`},
		{name: "no start", content: strings.Replace(good, `"startedAt": "2024-05-01T10:00:00Z", `, "", 1), mode: 0o600,
			want: `run file {path}: missing "startedAt"`},
		{name: "zero start", content: strings.Replace(good, "2024-05-01T10:00:00Z", "0001-01-01T00:00:00Z", 1), mode: 0o600,
			want: `run file {path}: missing "startedAt"`},
		{name: "unknown status", content: strings.Replace(good, `"failed"`, `"finished"`, 1), mode: 0o600,
			want: `run file {path}: unknown status "finished", expected one of pending, running, done, skipped, failed, interrupted, paused, abandoned`},
		{name: "status with newline", content: strings.Replace(good, `"failed"`, `"fail\ned"`, 1), mode: 0o600,
			want: `run file {path}: unknown status "fail\ned", expected one of pending, running, done, skipped, failed, interrupted, paused, abandoned`},
		{name: "truncated", content: good[:20], mode: 0o600,
			want: "run file {path} is corrupt or truncated (unexpected end of JSON input); it was left as it is"},
		{name: "newer", content: strings.Replace(good, `"schema": 1`, `"schema": 2`, 1), mode: 0o600,
			want: "run file {path} has schema version 2, newer than this cookbook's 1: use a newer cookbook"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s, path := writeRun(t, id, tc.content, tc.mode)
			want := strings.ReplaceAll(tc.want, "{path}", path)
			r, err := s.Load(id)
			switch {
			case tc.want == "" && err != nil:
				t.Fatalf("Load: %v", err)
			case tc.want == "" && r.ID != id:
				t.Errorf("Load: id %q, want %q", r.ID, id)
			case tc.want != "" && (err == nil || err.Error() != want):
				t.Errorf("Load error:\n got %v\nwant %s", err, want)
			}
			if err != nil && strings.Contains(err.Error(), "\n") {
				t.Errorf("Load error is not one line: %q", err)
			}
			runs, errs := s.List()
			if tc.want == "" {
				if len(runs) != 1 || len(errs) != 0 {
					t.Errorf("List: %d runs, errors %v; want the run", len(runs), errs)
				}
			} else if len(runs) != 0 || len(errs) != 1 || errs[0].Error() != want {
				t.Errorf("List: %d runs, errors %v; want the error %s", len(runs), errs, want)
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != tc.content {
				t.Errorf("the file was changed (%v)", err)
			}
			fi, err := os.Stat(path)
			if err != nil || fi.Mode().Perm() != tc.mode {
				t.Errorf("the file's mode was changed (%v)", err)
			}
		})
	}
}

func TestLoadNotFound(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	if _, err := s.Load("20240501-100000-abcdef"); !errors.Is(err, ErrNotFound) {
		t.Errorf("Load of a missing run: %v, want ErrNotFound", err)
	}
}

func TestSaveLoad(t *testing.T) {
	s := &Store{Dir: t.TempDir()}
	start := time.Date(2024, 5, 1, 10, 0, 0, 0, time.UTC)
	r := &Run{ID: NewID(start), Cookbook: "toy", Status: Running, StartedAt: start,
		Steps: []Step{{Name: "one", Status: Pending}}}
	if err := s.Save(r); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(s.Path(r.ID))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("saved with mode %04o, want 0600", fi.Mode().Perm())
	}
	got, err := s.Load(r.ID)
	if err != nil {
		t.Fatal(err)
	}
	if got.ID != r.ID || got.Cookbook != "toy" || got.Status != Running || !got.StartedAt.Equal(start) {
		t.Errorf("Load: %+v, want %+v", got, r)
	}
}

func TestCheckDir(t *testing.T) {
	root := os.Geteuid() == 0
	base := t.TempDir()
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	locked := filepath.Join(base, "locked")
	if err := os.Mkdir(locked, 0o500); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		dir    string
		want   string // the error; "" for none
		asUser bool   // root bypasses permissions: skip when root
	}{
		{name: "empty", dir: "", want: "--state-dir is empty: expected a directory path"},
		{name: "existing dir", dir: base},
		{name: "existing dir, trailing slash", dir: base + "/"},
		{name: "new dir", dir: filepath.Join(base, "new")},
		{name: "new nested dir", dir: filepath.Join(base, "new", "er", "est")},
		{name: "regular file", dir: file,
			want: "--state-dir " + file + ": is a regular file, expected a directory"},
		{name: "under a regular file", dir: filepath.Join(file, "sub"),
			want: "--state-dir " + file + "/sub: cannot be created: not a directory (" + file + " is a regular file)"},
		{name: "deep under a regular file", dir: filepath.Join(file, "sub", "sub"),
			want: "--state-dir " + file + "/sub/sub: cannot be created: not a directory (" + file + " is a regular file)"},
		{name: "not writable", dir: locked, asUser: true,
			want: "--state-dir " + locked + ": is not writable by this process: permission denied, expected a writable directory"},
		{name: "under a dir not writable", dir: filepath.Join(locked, "sub"), asUser: true,
			want: "--state-dir " + locked + "/sub: cannot be created: permission denied (" + locked + " is not writable by this process)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if tc.asUser && root {
				t.Skip("running as root, which bypasses permissions: the cases under a regular file stand in for it")
			}
			before := entries(t, base)
			err := CheckDir(tc.dir)
			switch {
			case tc.want == "" && err != nil:
				t.Errorf("CheckDir(%q): %v", tc.dir, err)
			case tc.want != "" && (err == nil || err.Error() != tc.want):
				t.Errorf("CheckDir(%q):\n got %v\nwant %s", tc.dir, err, tc.want)
			}
			if diff := cmp.Diff(before, entries(t, base)); diff != "" {
				t.Errorf("CheckDir(%q) created or removed files (-before +after):\n%s", tc.dir, diff)
			}
		})
	}
}

// entries returns the paths under dir, to check that nothing was created.
func entries(t *testing.T, dir string) []string {
	t.Helper()
	var names []string
	err := filepath.WalkDir(dir, func(p string, _ os.DirEntry, err error) error {
		names = append(names, p)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return names
}
