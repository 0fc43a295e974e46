from .jbu_neck import JBUNeck

__all__ = ['JBUNeck']
