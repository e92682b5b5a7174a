package main

import (
	"os"
	"strings"
	"testing"
)

// TestEnvExampleListsEverySetting keeps deploy/.env.example and the README's table true to
// the settings serve really reads.
func TestEnvExampleListsEverySetting(t *testing.T) {
	t.Parallel()
	for _, file := range []string{"../../deploy/.env.example", "../../README.md"} {
		data, err := os.ReadFile(file)
		if err != nil {
			t.Fatal(err)
		}
		for _, s := range (&serveConfig{}).settings() {
			if !strings.Contains(string(data), s.env) {
				t.Errorf("%s does not mention %s", file, s.env)
			}
			if file == "../../README.md" && !strings.Contains(string(data), "`--"+s.flag+"`") {
				t.Errorf("%s does not mention the flag --%s", file, s.flag)
			}
		}
	}
}
