package cookbooks

// All returns every cookbook, in the order `cookbook list` shows them.
func All() []Cookbook {
	return []Cookbook{
		Drain(),    // cordon + drain one node
		Cordon(),   // cordon one node
		Uncordon(), // uncordon one node
	}
}
