package app

import (
	"fmt"
	"strings"

	"github.com/spf13/pflag"
	cliflag "k8s.io/component-base/cli/flag"
	"k8s.io/component-base/featuregate"
	logsapi "k8s.io/component-base/logs/api/v1"
)

// newFeatureGate returns a feature gate holding the features this proxy
// knows. It has none of its own yet: only the logging ones component-base
// registers (ContextualLogging, LoggingAlphaOptions, LoggingBetaOptions)
// and the AllAlpha and AllBeta switches. Any other name is an error, so a
// gate meant for kube-proxy is not silently ignored.
func newFeatureGate() featuregate.MutableVersionedFeatureGate {
	fg := featuregate.NewFeatureGate()
	if err := logsapi.AddFeatureGates(fg); err != nil {
		panic(fmt.Sprintf("registering the logging feature gates: %v", err))
	}
	return fg
}

// addFeatureGatesFlag registers --feature-gates. The flag only collects
// key=value pairs into o.FeatureGates, so the configuration file's
// featureGates can be merged under them before the gate is built.
func (o *Options) addFeatureGatesFlag(fs *pflag.FlagSet) {
	fs.Var(cliflag.NewMapStringBool(&o.FeatureGates), "feature-gates",
		"A set of key=value pairs that describe feature gates for alpha/experimental features. Options are:\n"+
			strings.Join(newFeatureGate().KnownFeatures(), "\n"))
}

// FeatureGate returns a feature gate with o.FeatureGates (--feature-gates
// and the configuration file's featureGates) applied. An unknown gate, or
// a locked one set against its value, is an error.
func (o *Options) FeatureGate() (featuregate.FeatureGate, error) {
	fg, err := buildFeatureGate(o.FeatureGates)
	if err != nil {
		return nil, fmt.Errorf("--feature-gates: %w", err)
	}
	return fg, nil
}

// buildFeatureGate returns a feature gate with gates set; the error lists
// the known gates.
func buildFeatureGate(gates map[string]bool) (featuregate.MutableVersionedFeatureGate, error) {
	fg := newFeatureGate()
	if err := fg.SetFromMap(gates); err != nil {
		return nil, fmt.Errorf("%w (known gates: %s)", err, strings.Join(knownGateNames(fg), ", "))
	}
	return fg, nil
}

// knownGateNames lists the gate names fg accepts, sorted.
func knownGateNames(fg featuregate.MutableVersionedFeatureGate) []string {
	var names []string
	for _, k := range fg.KnownFeatures() {
		name, _, _ := strings.Cut(k, "=")
		names = append(names, name)
	}
	return names
}
