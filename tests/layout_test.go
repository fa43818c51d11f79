package tests

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// README's layout table names every package of every module in go.work,
// so a newcomer finds each one there.
func TestReadmeNamesEveryPackage(t *testing.T) {
	mods, err := exec.Command("go", "list", "-m", "-f", "{{.Dir}}").Output()
	if err != nil {
		t.Fatalf("go list -m: %v", err)
	}
	var patterns []string
	for _, dir := range strings.Fields(string(mods)) {
		patterns = append(patterns, dir+"/...")
	}
	out, err := exec.Command("go", append([]string{"list", "-f", "{{.Dir}}"}, patterns...)...).Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	root, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, dir := range strings.Fields(string(out)) {
		rel, err := filepath.Rel(root, dir)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(readme), "`"+filepath.ToSlash(rel)+"`") {
			t.Errorf("README.md's layout does not name package `%s`", rel)
		}
	}
}
