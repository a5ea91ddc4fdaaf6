package cookbooks

import (
	"encoding/json"
	"log/slog"
	"reflect"
	"sort"
	"strings"

	"example.com/cookbook/cookbooks/pipeline"
)

// decided returns what a run decided from its configuration and flags, recorded under
// key when the run was first planned; a run planned for the first time records fresh.
// When the recorded value differs from what the configuration says now (it was edited
// between a failure and the resume), the run goes on with the recorded value and log
// warns naming the keys that differ, each as prefix + the field's name
// ("clusters.toolsbeta.roles.worker.provision").
func decided[T any](log *slog.Logger, v *pipeline.Values, key pipeline.Key[T], fresh T, prefix string) (T, error) {
	rec, ok, err := key.Lookup(v)
	if err != nil {
		return rec, err
	}
	if !ok {
		return fresh, key.Set(v, fresh)
	}
	if diff := changedFields(rec, fresh); len(diff) > 0 {
		for i := range diff {
			diff[i] = prefix + diff[i]
		}
		log.Warn("the configuration changed since this run was planned; going on with what the run recorded",
			"run", v.RunID(), "changed", strings.Join(diff, ", "))
	}
	return rec, nil
}

// changedFields names the JSON fields whose values differ between a and b.
func changedFields(a, b any) []string {
	fields := func(x any) map[string]any {
		raw, _ := json.Marshal(x)
		var m map[string]any
		json.Unmarshal(raw, &m)
		return m
	}
	ma, mb := fields(a), fields(b)
	var out []string
	for k, va := range ma {
		if !reflect.DeepEqual(va, mb[k]) {
			out = append(out, k)
		}
	}
	for k := range mb {
		if _, ok := ma[k]; !ok {
			out = append(out, k)
		}
	}
	sort.Strings(out)
	return out
}
