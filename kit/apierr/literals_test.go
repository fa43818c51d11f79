package apierr_test

import (
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
)

// reasonLiteral finds a reason written as a string where an apierr.Reason
// constant belongs: built into an error, or compared.
var reasonLiteral = regexp.MustCompile(`apierr\.(Invalid|Conflict|TooLarge|Unavailable|Errorf)\("` +
	`|apierr\.New\([A-Za-z.]+, "` +
	`|\bReason (==|!=) "[a-z]` +
	`|\b[Rr]eason(Of)?\([a-z]+\) (==|!=) "[a-z]`)

// notYetMoved are the files that still build or compare reasons as
// literals. It is empty: every file names the constants, and no file joins
// it (the list stays so that a move in steps has a place to say so).
var notYetMoved = map[string]bool{}

// No reason is written as a literal outside its definition (reasons.go):
// every site names an apierr.Reason, so a renamed reason is renamed
// everywhere and a typo does not compile.
func TestNoReasonLiterals(t *testing.T) {
	root := filepath.Join("..", "..")
	var found []string
	clean := map[string]bool{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (d.Name() == ".git" || d.Name() == "node_modules") {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, ".pb.go") {
			return nil
		}
		rel, _ := filepath.Rel(root, path)
		rel = filepath.ToSlash(rel)
		data, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		hit := false
		for i, line := range strings.Split(string(data), "\n") {
			if reasonLiteral.MatchString(line) && !strings.Contains(line, "reasonLiteral") {
				hit = true
				if !notYetMoved[rel] {
					found = append(found, rel+":"+itoa(i+1)+": "+strings.TrimSpace(line))
				}
			}
		}
		if notYetMoved[rel] && !hit {
			clean[rel] = true
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	sort.Strings(found)
	for _, f := range found {
		t.Errorf("reason literal (use an apierr.Reason constant): %s", f)
	}
	for f := range clean {
		t.Logf("%s no longer builds reasons from literals: drop it from notYetMoved", f)
	}
}

func itoa(n int) string {
	var b [20]byte
	i := len(b)
	for n > 0 || i == len(b) {
		i--
		b[i] = byte('0' + n%10)
		n /= 10
	}
	return string(b[i:])
}
