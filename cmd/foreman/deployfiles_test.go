package main

import (
	"os"
	"regexp"
	"strings"
	"testing"
)

// The image runs as a non-root user and brings /data owned by it: Docker copies the
// owner of an image's directory into a fresh named volume, which would otherwise be
// root's and unwritable for foreman.
func TestDockerfileNonRootWithWritableData(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deploy/Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	final := string(data)[strings.LastIndex(string(data), "\nFROM "):]
	user := regexp.MustCompile(`(?m)^USER (\S+)`).FindStringSubmatch(final)
	if user == nil || strings.HasPrefix(user[1], "root") || strings.HasPrefix(user[1], "0") {
		t.Fatalf("the final stage runs as %v, want a non-root USER", user)
	}
	uid := strings.Split(user[1], ":")[0]
	chown := regexp.MustCompile(`(?m)^COPY --from=\S+ --chown=` + uid + `(:\S+)? \S+ /data$`).FindStringIndex(final)
	volume := strings.Index(final, "VOLUME /data")
	if chown == nil || volume < 0 || chown[0] > volume {
		t.Errorf("the final stage must create /data owned by %s before VOLUME /data", uid)
	}
}

// The compose file's cluster profile: three NATS nodes from the shipped cluster config and
// two foremen, each with its own Ollama, on all three nodes.
func TestComposeClusterProfile(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../../deploy/compose.yaml")
	if err != nil {
		t.Fatal(err)
	}
	s := string(data)
	for _, want := range []string{
		"\n  n1:", "\n  n2:", "\n  n3:", "\n  foreman-a:", "\n  foreman-b:", "profiles: [cluster]",
		"./nats-cluster.conf:/etc/nats/nats-cluster.conf:ro", "${FOREMAN_OLLAMA_URL_A", "${FOREMAN_OLLAMA_URL_B",
		"@n1:4222,", "@n2:4222,", "@n3:4222", `FOREMAN_NATS_REPLICAS: "3"`,
	} {
		if !strings.Contains(s, want) {
			t.Errorf("deploy/compose.yaml lacks %q", want)
		}
	}
}
