"""Mock edge devices and known-data partitions for Ember's data plane.

- `ember.devices.sensors`: deterministic simulator of industrial machines (`generate_table`,
  `iter_readings`, `Fleet`, `READING_SCHEMA`); `ember.devices.profiles` derives who each
  machine is from `(seed, node, device)`.
- `ember.devices.partition`: scikit-learn's bundled digits spread over nodes, IID or
  Dirichlet(alpha) (`partition_digits`, `split_indices`).
- `ember.devices.publish`: `MqttPublisher` (batched envelopes on `ember/v1/data/{tag}`) and
  `put_table` (Arrow Flight `do_put`).
- `ember.devices.mock`: `run_mock`, the body of `ember devices mock`.
"""
