package main

import (
	"bytes"
	"os/exec"
	"strings"
	"testing"
)

// The latchkey binary embeds NATS servers (latchkey dev, bench, check
// --in-process) but must link no test code: not the testing package, and
// not kit/natstest or tests/..., which need it. kit/natsembed is the
// embedded server for production use.
func TestLinksNoTestCode(t *testing.T) {
	cmd := exec.Command("go", "list", "-deps", ".")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("go list -deps: %v\n%s", err, stderr.String())
	}
	for _, pkg := range strings.Fields(string(out)) {
		if pkg == "testing" || strings.HasPrefix(pkg, "testing/") ||
			strings.HasSuffix(pkg, "/natstest") || strings.HasPrefix(pkg, "github.com/latchkey/latchkey/tests") {
			t.Errorf("latchkey links %s", pkg)
		}
	}
}
