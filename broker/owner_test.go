package broker_test

import (
	"go/parser"
	gotoken "go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// broker is the one owner of foreman's NATS protocol: the packages that carry job traffic
// read and write it through broker's API and never import NATS themselves.
func TestOnlyBrokerSpeaksNATS(t *testing.T) {
	t.Parallel()
	for _, dir := range []string{"../gateway", "../gateway/webhook", "../worker"} {
		files, err := filepath.Glob(filepath.Join(dir, "*.go"))
		if err != nil || len(files) == 0 {
			t.Fatalf("%s: no Go files (%v)", dir, err)
		}
		for _, f := range files {
			if strings.HasSuffix(f, "_test.go") {
				continue
			}
			src, err := os.ReadFile(f)
			if err != nil {
				t.Fatal(err)
			}
			file, err := parser.ParseFile(gotoken.NewFileSet(), f, src, parser.ImportsOnly)
			if err != nil {
				t.Fatal(err)
			}
			for _, imp := range file.Imports {
				if p, _ := strconv.Unquote(imp.Path.Value); strings.HasPrefix(p, "github.com/nats-io/") {
					t.Errorf("%s imports %s: job traffic goes through broker", f, p)
				}
			}
		}
	}
}
