package worker

import (
	"testing"
	"time"
)

// A model's durations are one whatever spelling its jobs use: Ollama resolves names
// case-insensitively with the tag defaulting to latest.
func TestDurationsKeyedByNormalisedModel(t *testing.T) {
	t.Parallel()
	d := newDurations(maxLearnedModels, func(string) bool { return true })
	d.observeRun("Tiny-A", 3*time.Second)
	d.observeLoad("tiny-a", time.Second)
	for _, name := range []string{"tiny-a", "tiny-a:latest", " TINY-A:Latest"} {
		if run, load := d.estimate(name); run != 3*time.Second || load != time.Second {
			t.Errorf("%q: run %v load %v, want 3s and 1s", name, run, load)
		}
	}
}
