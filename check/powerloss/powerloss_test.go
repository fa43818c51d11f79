package powerloss_test

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"

	"github.com/latchkey/latchkey/check/powerloss"
)

func mount(t *testing.T) (*powerloss.FS, string) {
	t.Helper()
	raw, mnt := t.TempDir(), t.TempDir()
	p, err := powerloss.Mount(raw, mnt, powerloss.Options{})
	if err != nil {
		if os.Getenv("CI") != "true" {
			t.Skipf("no FUSE here: %v", err)
		}
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Unmount() })
	return p, mnt
}

// TestCutKeepsOnlySynced: what was fsynced survives a cut, what came
// after (appended or overwritten) is gone, and a new unsynced file is
// empty.
func TestCutKeepsOnlySynced(t *testing.T) {
	p, mnt := mount(t)
	f, err := os.Create(filepath.Join(mnt, "a"))
	if err != nil {
		t.Fatal(err)
	}
	mustWrite := func(b string, off int64) {
		if _, err := f.WriteAt([]byte(b), off); err != nil {
			t.Fatal(err)
		}
	}
	mustWrite("synced-", 0)
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	mustWrite("SYNCED", 0)   // overwrite below the synced size
	mustWrite("appended", 7) // past it
	if err := os.WriteFile(filepath.Join(mnt, "b"), []byte("never synced"), 0o644); err != nil {
		t.Fatal(err)
	}
	got, _ := os.ReadFile(filepath.Join(mnt, "a"))
	if string(got) != "SYNCED-appended" {
		t.Fatalf("before the cut: %q", got)
	}
	f.Close()
	lost, err := p.Cut()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cut: %+v", lost)
	if got, _ := os.ReadFile(filepath.Join(mnt, "a")); !bytes.Equal(got, []byte("synced-")) {
		t.Fatalf("after the cut a holds %q, want %q", got, "synced-")
	}
	if got, _ := os.ReadFile(filepath.Join(mnt, "b")); len(got) != 0 {
		t.Fatalf("after the cut b holds %q, want nothing", got)
	}
	if lost.Files != 2 {
		t.Errorf("lost files %d, want 2", lost.Files)
	}
}
