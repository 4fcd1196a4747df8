"""The ORing PaaS side: the MQTT adapter, delivery, cloud config messages, settings
and the configurator.
"""
