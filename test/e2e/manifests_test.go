//go:build e2e

package e2e

import (
	"context"
	"os/exec"
	"path/filepath"
	"testing"
)

// The manifests in the repository are valid for the API server
// (server-side dry run: schema, defaulting and admission, nothing created).
func TestManifestsAreValid(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(lab.Repo, "manifests", "*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no manifests found (err %v)", err)
	}
	for _, f := range files {
		out, err := exec.CommandContext(context.Background(), lab.KubectlPath(), "--kubeconfig="+lab.Kubeconfig(),
			"apply", "--dry-run=server", "-f", f).CombinedOutput()
		if err != nil {
			t.Fatalf("kubectl apply --dry-run=server -f %s: %v\n%s", f, err, out)
		}
		t.Logf("%s:\n%s", filepath.Base(f), out)
	}
}
