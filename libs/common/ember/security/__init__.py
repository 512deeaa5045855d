"""Ember's security foundation: provisioned identities, the broker ACL generated from the topic map,
certificates, and the MQTT connection options built from an identity.

- `ember.security.pki`: a CA and the certificates it signs (broker, each mldata, registry).
- `ember.security.identities`: one identity per principal, stored as a bundle; the password file.
- `ember.security.acl`: the Mosquitto ACL, generated from `ember.topics.ALL` (least privilege).
- `ember.security.provision`: `provision`, `rotate`, `revoke`, `export_node`, per-job credentials.
- `ember.security.broker`: the secured broker config (`secure_broker`).
- `ember.security.mqtt`: `MqttSecurity`, the aiomqtt options for one identity (no `cryptography`).

See docs/security.md.
"""
