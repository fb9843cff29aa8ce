"""A gradient-boosted decision tree classifier (XGBoost)."""

from xgboost import XGBClassifier


def model():
    return XGBClassifier(n_estimators=100, max_depth=4, learning_rate=0.2)
